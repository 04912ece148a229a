"""`verbo eval` (generate on a dataset and score it) and `verbo score` (score a predictions file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import (Command, add_decode_options, add_reading_options, decode_options_from_flags, load_vlm,
                     read_options)

METRIC_HELP = ("comma-separated: bleu, meteor, rouge_l, cider, spice, exact_match, vqa, textvqa, numeric, choice, wer, "
               "cer")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluate.benchmarks import BENCHMARKS

    p.add_argument("model", metavar="MODEL")
    p.add_argument("--data", help="data file or folder (any supported format)")
    p.add_argument("--benchmark", metavar="NAME[,NAME...]",
                   help=f"instead of --data: official benchmarks, read from --data-dir and scored by their "
                        f"official rules: {', '.join(BENCHMARKS)}")
    p.add_argument("--metrics", default="bleu,meteor,rouge_l,cider,exact_match", help=f"with --data: {METRIC_HELP}")
    p.add_argument("--out", help="evaluation folder (default: eval/<model name>)")
    group = p.add_argument_group("benchmarks")
    group.add_argument("--data-dir", help="folder holding each benchmark's official files as it publishes them "
                                          "(README: Benchmarks)")
    group.add_argument("--split", help="split of every benchmark (default: each one's own: coco-karpathy test, "
                                       "vqav2 val, ...)")
    group.add_argument("--limit", type=int, help="score N items of each benchmark, drawn with seed 0 and kept in "
                                                 "the benchmark's order (default: all)")
    add_reading_options(p)
    add_decode_options(p, length_default="256; with --benchmark, the benchmark's own")


def cmd_eval(args: argparse.Namespace) -> None:
    from ..evaluate.metrics import parse_metrics
    from ..evaluate.run import evaluate

    if (args.data is None) == (args.benchmark is None):
        what = "--data and --benchmark exclude each other" if args.data else "nothing to evaluate"
        raise ConfigError(f"{what}: give --data FILE (a dataset with references) or --benchmark NAME (official "
                          "benchmarks)")
    out = Path(args.out or Path("eval") / Path(args.model).name)
    if args.benchmark:
        return _eval_benchmarks(args, out)
    result = evaluate(args.model, args.data, out, parse_metrics(args.metrics), decode_options_from_flags(args),
                      args.batch_size, device=args.device, dtype=args.dtype, quantize=args.quantize,
                      compiled=args.compile,
                      template=args.template, read=read_options(args))
    _print_scores(result)
    print(result.truncation)
    print(f"predictions and report: {out}")


EVAL = Command(
    "generate on a dataset and score it: every metric with a bootstrap interval", _eval_arguments, cmd_eval,
    "examples:\n  verbo eval runs/qs/final --data data/shapes/test/caption_short_en.json --out eval/qs\n"
    "  verbo eval llava-hf/llava-1.5-7b-hf --data vqa/test.json --metrics vqa,exact_match --out eval/llava\n"
    "  verbo eval runs/vit-gpt2/final --data annotations/captions_val2014.json --image-root val2014\n"
    "  verbo eval llava-hf/llava-1.5-7b-hf --benchmark coco-karpathy,vqav2 --data-dir benchmarks --limit 500\n\n"
    "--benchmark runs papers' benchmarks from their official files, laid out under --data-dir as each\n"
    "publishes them (README: Benchmarks), with the reference implementation's prompt and scoring; it writes\n"
    "OUT/<benchmark>/ (predictions.jsonl, the submission file, report.json, report.md) and OUT/summary.json,\n"
    "and a rerun with the same settings resumes where it stopped.")


def _eval_benchmarks(args: argparse.Namespace, out: Path) -> None:
    from ..evaluate.benchmarks.run import BenchmarkRun, benchmarks_named, run_benchmarks, summary_rows

    if not args.data_dir:
        raise ConfigError("--benchmark needs --data-dir DIR, the folder holding the benchmarks' official files")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit: {args.limit}; give a number of items, 1 or more")
    about = {"model": str(args.model), "template": args.template, "dtype": args.dtype, "quantize": args.quantize}
    run = BenchmarkRun(benchmarks_named(args.benchmark), Path(args.data_dir), out, args.split, args.limit,
                       decode_options_from_flags(args), args.max_new_tokens, args.batch_size, about)
    rows = summary_rows(run_benchmarks(run, lambda: load_vlm(args)))
    widths = [max(len(row[i]) for row in [("benchmark", "metric", "value"), *rows]) for i in range(3)]
    for row in [("benchmark", "metric", "value"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"predictions, submission files and reports: {out}/<benchmark>; summary: {out / 'summary.json'}")


def _score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", metavar="PREDICTIONS",
                   help="our predictions.jsonl, LLaVA answers JSONL (question_id, text), VQAv2 results JSON "
                        "([{question_id, answer}]), or COCO caption results JSON ([{image_id, caption}])")
    p.add_argument("--refs", help="VQAv2 annotations JSON (v2_mscoco_*_annotations.json; the questions file is not "
                                  "needed), TextVQA JSON ({data: [...]}), JSON/JSONL with question_id and "
                                  "answers/answer, or COCO caption annotations JSON")
    p.add_argument("--metrics", default="bleu,meteor,rouge_l,cider", help=METRIC_HELP)
    p.add_argument("--out", help="also write report.json/report.md/metrics.png here")


def cmd_score(args: argparse.Namespace) -> None:
    from ..evaluate.metrics import parse_metrics
    from ..evaluate.scoring import score_file

    _print_scores(score_file(args.predictions, args.refs, parse_metrics(args.metrics), args.out))


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
