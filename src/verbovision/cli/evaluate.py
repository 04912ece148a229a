"""`verbo eval` (generate on a dataset and score it) and `verbo score` (score a predictions file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import (MODEL_HELP, Command, add_decode_options, add_reading_options, decode_options_from_flags, load_vlm,
                     read_options)

EVAL_METRICS = "bleu,meteor,rouge_l,cider,exact_match"
"""verbo eval --data's default --metrics."""
METRIC_HELP = ("comma-separated: bleu, meteor, rouge_l, cider, spice, exact_match, vqa, textvqa, numeric, choice, wer, "
               "cer")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluate.benchmarks import BENCHMARKS

    p.add_argument("model", metavar="MODEL", nargs="?", help=f"the model to evaluate: {MODEL_HELP} (not with "
                                                              "--endpoint)")
    p.add_argument("--data", help="data file or folder (any supported format)")
    p.add_argument("--benchmark", metavar="NAME[,NAME...]",
                   help=f"instead of --data: official benchmarks, read from --data-dir (default: each one's hub "
                        f"dataset) and scored by their official rules: {', '.join(BENCHMARKS)}")
    p.add_argument("--metrics", default=EVAL_METRICS, help=f"with --data: {METRIC_HELP}")
    p.add_argument("--out", help="evaluation folder (default: eval/<model name>; a run's final: eval/<run name>)")
    _add_compare_argument(p, "another evaluation folder (its predictions.jsonl) or our predictions file; with "
                             "--benchmark, the --out folder of another run of the same benchmarks")
    group = p.add_argument_group("benchmarks")
    group.add_argument("--data-dir", help="folder holding each benchmark's official files as it publishes them, or a "
                                          "local copy of a benchmark's hub dataset (its parquet files), or a hub "
                                          "dataset id OWNER/NAME (one benchmark); default: each benchmark's own hub "
                                          "dataset, through Hugging Face's cache (README: Benchmarks)")
    group.add_argument("--split", help="split of every benchmark (default: each one's own: coco-karpathy test, "
                                       "vqav2 val, ...)")
    group.add_argument("--limit", type=int, help="score N items of each benchmark, drawn with seed 0 and kept in "
                                                 "the benchmark's order (default: all)")
    _add_endpoint_arguments(p)
    add_reading_options(p)
    add_decode_options(p, length_default="256; with --benchmark, the benchmark's own")


def _add_endpoint_arguments(p: argparse.ArgumentParser) -> None:
    from ..infer.endpoint import CACHE_FILE, CONCURRENCY

    group = p.add_argument_group("a served model (instead of MODEL)")
    group.add_argument("--endpoint", metavar="URL",
                       help="evaluate the model an OpenAI-compatible server serves (verbo serve, vLLM, a hosted API): "
                            "its API root, e.g. http://127.0.0.1:8000/v1; one chat completion per record, image as a "
                            "data: URI; API key from $OPENAI_API_KEY; replies cached in the evaluation folder's "
                            f"{CACHE_FILE}, so a rerun sends only what is missing; no loss or perplexity")
    group.add_argument("--endpoint-model", metavar="NAME",
                       help="the served model's name (default: the only one the server lists at /models)")
    group.add_argument("--concurrency", type=int, default=CONCURRENCY, help="requests in flight")


def _refuse_flags_of_the_other_mode(args: argparse.Namespace) -> None:
    """--benchmark's flags with --data, and --data's with --benchmark, are an error: either would be ignored."""
    from ..data.rows import ReadOptions

    if args.data is not None:
        mode, other, why = "--data", "--benchmark", "--data scores every record of its file"
        given = {"--data-dir": args.data_dir is not None, "--split": args.split is not None,
                 "--limit": args.limit is not None}
    else:
        mode, other, why = "--benchmark", "--data", "each benchmark is read and scored by its own rules"
        given = {"--metrics": args.metrics != EVAL_METRICS, "--prompt": args.prompt != ReadOptions.prompt,
                 "--format": args.format is not None, "--image-column": args.image_column is not None,
                 "--text-column": args.text_column is not None, "--question-column": args.question_column is not None,
                 "--image-root": args.image_root is not None}
    flags = [flag for flag, is_given in given.items() if is_given]
    if flags:
        raise ConfigError(f"verbo eval {mode}: {', '.join(flags)} {'goes' if len(flags) == 1 else 'go'} with {other}; "
                          f"{why}")


def _endpoint(args: argparse.Namespace):
    """The `infer.endpoint.Endpoint` --endpoint names (None without it), after one-line errors for a wrong mix of
    MODEL, --endpoint and the flags of either."""
    from ..errors import ConfigError
    from ..infer.endpoint import CONCURRENCY, Endpoint
    from ..infer.options import BATCH_SIZE

    if args.endpoint is None:
        if args.model is None:
            raise ConfigError("verbo eval: give MODEL, or --endpoint URL to evaluate a served model")
        if args.endpoint_model is not None or args.concurrency != CONCURRENCY:
            raise ConfigError("verbo eval: --endpoint-model and --concurrency go with --endpoint URL")
        return None
    if args.model is not None:
        raise ConfigError(f"verbo eval: MODEL ({args.model}) or --endpoint, not both; name the served model with "
                          "--endpoint-model")
    loading = {"--device": args.device is not None, "--dtype": args.dtype != "auto",
               "--quantize": args.quantize != "none", "--template": args.template is not None,
               "--compile": args.compile, "--batch-size": args.batch_size != BATCH_SIZE}
    if any(loading.values()):
        raise ConfigError(f"verbo eval --endpoint: {', '.join(f for f, given in loading.items() if given)} say how "
                          "to load and batch a model here; the server loads and batches its own")
    return Endpoint(args.endpoint, args.endpoint_model, args.concurrency)


def cmd_eval(args: argparse.Namespace) -> None:
    from ..evaluate.metrics import parse_metrics
    from ..evaluate.run import evaluate
    from ..infer.endpoint import CACHE_FILE, ResponseCache

    if (args.data is None) == (args.benchmark is None):
        what = "--data and --benchmark exclude each other" if args.data else "nothing to evaluate"
        raise ConfigError(f"{what}: give --data FILE (a dataset with references) or --benchmark NAME (official "
                          "benchmarks)")
    _refuse_flags_of_the_other_mode(args)
    endpoint = _endpoint(args)
    name = str(endpoint) if endpoint else args.model
    out = _evaluation_folder(args.out or default_out(endpoint.model if endpoint else args.model))
    if endpoint:
        endpoint.cache = ResponseCache(out / CACHE_FILE)
    if args.benchmark:
        return _eval_benchmarks(args, out, name, endpoint)
    result = evaluate(name, args.data, out, parse_metrics(args.metrics), decode_options_from_flags(args),
                      args.batch_size, device=args.device, dtype=args.dtype, quantize=args.quantize,
                      compiled=args.compile, template=args.template, read=read_options(args), backend=endpoint)
    _print_scores(result)
    print(result.truncation)
    _compare(result, args, out)
    print(f"predictions and report: {out}")


def default_out(model: str) -> Path:
    """eval/<model name>, a run's final named by its run (runs/qs/final: eval/qs), so that evaluations of several
    runs' final models do not all go to eval/final, each replacing the last."""
    path = Path(model)
    return Path("eval") / (path.parent.name if path.name == "final" and path.parent.name else path.name)


EVAL = Command(
    "generate on a dataset and score it, with bootstrap intervals for the metrics averaged over items",
    _eval_arguments, cmd_eval,
    "examples:\n  verbo eval runs/qs/final --data data/shapes/test/caption_short_en.json --out eval/qs\n"
    "  verbo eval llava-hf/llava-1.5-7b-hf --data vqa/test.json --metrics vqa,exact_match --out eval/llava\n"
    "  verbo eval runs/vit-gpt2/final --data annotations/captions_val2014.json --image-root val2014\n"
    "  verbo eval runs/qs2/final --data data/shapes/test/caption_short_en.json --out eval/qs2 --compare eval/qs\n"
    "  verbo eval --endpoint http://127.0.0.1:8000/v1 --data data/shapes/test/caption_short_en.json --out eval/served\n"
    "  verbo eval llava-hf/llava-1.5-7b-hf --benchmark coco-karpathy,vqav2 --data-dir benchmarks --limit 500\n"
    "  verbo eval llava-hf/llava-1.5-7b-hf --benchmark pope,gqa --limit 500\n\n"
    "--benchmark runs papers' benchmarks from their official files, laid out under --data-dir as each\n"
    "publishes them, or from the hub dataset lmms-eval reads where one carries them (README: Benchmarks),\n"
    "with the reference implementation's prompt and scoring; it writes\n"
    "OUT/<benchmark>/ (predictions.jsonl, the submission file, report.json, report.md) and OUT/summary.json,\n"
    "and a rerun with the same settings resumes where it stopped.")


def _eval_benchmarks(args: argparse.Namespace, out: Path, name: str, endpoint) -> None:
    """--benchmark: every named benchmark with one model, the local one loaded only if something is left to
    generate, or the served one."""
    from ..evaluate.benchmarks.run import (BenchmarkRun, benchmarks_named, compare_benchmarks, run_benchmarks,
                                           summary_rows)
    from ..evaluate.compare import table

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit: {args.limit}; give a number of items, 1 or more")
    about = {"model": name, "template": args.template, "dtype": args.dtype, "quantize": args.quantize}
    run = BenchmarkRun(benchmarks_named(args.benchmark), args.data_dir, out, args.split, args.limit,
                       decode_options_from_flags(args), args.max_new_tokens, args.batch_size, about)
    rows = summary_rows(run_benchmarks(run, (lambda: endpoint) if endpoint else (lambda: load_vlm(args))))
    widths = [max(len(row[i]) for row in [("benchmark", "metric", "value"), *rows]) for i in range(3)]
    for row in [("benchmark", "metric", "value"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for comparison in (compare_benchmarks(run, args.compare) if args.compare else {}).values():
        print(table(comparison))
    print(f"predictions, submission files and reports: {out}/<benchmark>; summary: {out / 'summary.json'}")


def _score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", metavar="PREDICTIONS",
                   help="our predictions.jsonl, LLaVA answers JSONL (question_id, text), VQAv2 results JSON "
                        "([{question_id, answer}]), or COCO caption results JSON ([{image_id, caption}])")
    p.add_argument("--refs", help="VQAv2 annotations JSON (v2_mscoco_*_annotations.json; the questions file is not "
                                  "needed), TextVQA JSON ({data: [...]}), JSON/JSONL with question_id and "
                                  "answers/answer, or COCO caption annotations JSON (default: the references our "
                                  "predictions.jsonl carries; the other formats need --refs)")
    p.add_argument("--metrics", default="bleu,meteor,rouge_l,cider", help=METRIC_HELP)
    p.add_argument("--out", help="also write report.json/report.md/metrics.png here")
    _add_compare_argument(p, "another predictions file of the same items, in PREDICTIONS' format (scored with the "
                             "same --refs), or an evaluation folder")


def _evaluation_folder(out: str | Path) -> Path:
    """--out, refused before any work where a file is in the way of the folder to write."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file; give a folder for the predictions and reports")
    return out


def cmd_score(args: argparse.Namespace) -> None:
    from ..evaluate.metrics import parse_metrics
    from ..evaluate.scoring import score_file

    if args.out:
        _evaluation_folder(args.out)
    result = score_file(args.predictions, args.refs, parse_metrics(args.metrics), args.out)
    _print_scores(result)
    _compare(result, args, args.out, args.refs)


def _add_compare_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--compare", metavar="EVAL_OR_PREDICTIONS",
                   help=f"test the difference from another model on the same items: {what}; per metric the "
                        "difference, its 95%% interval and p-value (paired bootstrap), printed and added to the "
                        "report")


def _compare(result, args: argparse.Namespace, out, refs=None) -> None:
    """--compare: the paired test of this result against the other predictions, printed and written to `out`."""
    if not args.compare:
        return
    from ..evaluate.compare import compare_with, table, write_comparison
    from ..evaluate.metrics import parse_metrics

    comparison = compare_with(result, args.compare, parse_metrics(args.metrics), refs)
    print(table(comparison))
    if out:
        write_comparison(out, comparison)


def _print_scores(result) -> None:
    """Every value at full precision (the float's repr), then its breakdowns and official renderings."""
    rows = [("records", str(len(result.predictions)))] if result.predictions else []
    for name, value in result.values.items():
        low, high = result.intervals.get(name, (None, None))
        interval = f"  (95% CI {low!r} - {high!r})" if low is not None else ""
        rows.append((name, f"{float(value)!r}{interval}"))
    rows += [(name, repr(float(value))) for name, value in result.details.items()]
    rows += [(name, f"skipped: {reason}") for name, reason in result.skipped.items()]
    width = max(12, *(len(name) for name, _ in rows))
    for name, text in rows:
        print(f"{name:>{width}}: {text}")
    for note in result.notes:
        print(f"note: {note}")


SCORE = Command(
    "score a predictions file against references, no model needed", _score_arguments, cmd_score,
    "examples:\n  verbo score eval/qs/predictions.jsonl --metrics cider,bleu\n"
    "  verbo score captions_val2014_fakecap_results.json --refs captions_val2014.json\n"
    "  verbo score vqa_results.json --refs v2_mscoco_val2014_annotations.json --metrics vqa\n"
    "  verbo score answers.jsonl --refs TextVQA_0.5.1_val.json --metrics textvqa\n"
    "  verbo score answers.jsonl --refs questions_with_answers.jsonl --metrics vqa,exact_match\n\n"
    "vqa is VQAv2 accuracy exactly as the official vqaEval.py computes it (it normalises the answers only\n"
    "when the 10 human answers are not all identical), per question, overall, and per answer and question\n"
    "type when the references give them; values print at full precision, as fractions, and as vqaEval.py's\n"
    "percentages rounded to 2 decimals ('vqaEval.py %'). textvqa is TextVQA accuracy as m4c's evaluator\n"
    "computes it (always normalised). A results file may cover part of the references; 'records' says\n"
    "how many items were scored.")
