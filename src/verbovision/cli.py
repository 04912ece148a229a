"""`verbo`: one entry point, each subcommand mapped to one function."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import VerboError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and every option's default shown: appended as "(default: X)" unless the help
    already says it (in words, or where showing it would print a secret from the environment) or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        no_default = action.default is None or action.default is False or action.default == [] \
            or action.default is argparse.SUPPRESS
        if no_default or "default" in help or not (action.option_strings or action.nargs in ("?", "*")):
            return help
        return f"{help} (default: %(default)s)"


def _quiet_libraries() -> None:
    # transformers announces every image processor that falls back to PIL without torchvision; users need none of it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def _decode_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (greedy by default)")
    group.add_argument("--max-new-tokens", type=int, default=256,
                       help="longest reply in tokens (default: %(default)s); replies cut there are counted as "
                            "truncated")
    group.add_argument("--beams", type=int, default=1, help="beam search width")
    group.add_argument("--temperature", type=float, help="sampling temperature (turns sampling on)")
    group.add_argument("--top-p", type=float, help="nucleus sampling mass (turns sampling on)")
    group.add_argument("--top-k", type=int, help="sample among the k most likely tokens (turns sampling on)")
    group.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeating tokens")
    group.add_argument("--no-repeat-ngram-size", type=int, help="no n-gram of this size appears twice in a reply")
    group.add_argument("--min-new-tokens", type=int, help="shortest reply in tokens")
    group.add_argument("--length-penalty", type=float,
                       help="beam search: > 0 favours longer replies, < 0 shorter ones")
    group.add_argument("--early-stopping", action="store_true",
                       help="beam search: stop as soon as --beams candidates are finished")
    group.add_argument("--stop", action="append", default=[], help="stop string (repeat for several)")
    group.add_argument("--seed", type=int, help="seed for reproducible sampling")
    group.add_argument("--batch-size", type=int, default=16, help="replies generated together")
    group.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    group.add_argument("--quantize", default="none", metavar="{none,int8-dynamic,8bit,4bit}",
                       help="int8-dynamic: int8 linear layers on the CPU (half the memory); 8bit / 4bit: bitsandbytes "
                            "on a CUDA GPU (pip install bitsandbytes)")
    group.add_argument("--template", choices=["chat", "plain", "caption", "prefix"],
                       help="how prompts are laid out (default: what the model was trained with, its verbovision.json; "
                            "else its chat template; else the family's own prompt format): chat, plain (images, "
                            "then the prompt on its line), caption (images only) or prefix (PaliGemma's: images, "
                            "BOS, the prompt and a newline)")
    group.add_argument("--compile", action="store_true",
                       help="static KV cache + torch.compile for generation: identical outputs, faster once each "
                            "batch shape has compiled (seconds); best with a fixed --batch-size")


def load_vlm(args):
    """The model a generation command names, on its --device, quantized as asked."""
    from .infer import VLM

    return VLM(args.model, device=args.device, quantize=args.quantize, compiled=args.compile, template=args.template)


def _decode_options(args):
    from .infer import DecodeOptions

    return DecodeOptions(max_new_tokens=args.max_new_tokens, beams=args.beams, temperature=args.temperature,
                         top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                         seed=args.seed, stop=tuple(args.stop), length_penalty=args.length_penalty,
                         early_stopping=args.early_stopping, no_repeat_ngram_size=args.no_repeat_ngram_size,
                         min_new_tokens=args.min_new_tokens)


# ------------------------------------------------------------------------------------------------ commands


def cmd_quickstart(args) -> None:
    from .quickstart import quickstart

    from .quickstart import IMAGES

    quickstart(Path(args.out), n=args.n or IMAGES)


def cmd_data_synth(args) -> None:
    from .synth import synth_geometry, synth_shapes

    if args.kind == "shapes":
        langs = tuple(x for x in args.langs.split(",") if x)
        summary = synth_shapes(args.out, n=args.n or 3000, seed=args.seed, langs=langs)
    else:
        summary = synth_geometry(args.out, n=args.n or 1000, seed=args.seed)
    print(json.dumps(summary, indent=1, ensure_ascii=False))


def cmd_build(args) -> None:
    from .build import ConnectorSpec, LanguageSpec, ModelSpec, VisionSpec, build_vlm, describe, save_model, spec_record
    from .errors import ConfigError

    if not args.language:
        raise ConfigError("--language needs a pretrained LM (hub id or directory); from-scratch LMs are built by "
                          "`verbo train` from a recipe, which trains their tokenizer on the data")
    spec = ModelSpec(
        vision=VisionSpec(name=args.vision, feature_layer=args.feature_layer),
        language=LanguageSpec(name=args.language),
        connector=ConnectorSpec(type=args.connector, act=args.act, factor=args.factor),
        image_token=args.image_token,
    )
    model, processor = build_vlm(spec)
    save_model(model, processor, args.out, {"model_spec": spec_record(spec), "template": "chat"})
    print(f"{describe(model)} saved to {args.out}")


def cmd_train(args) -> None:
    from .recipe import load_recipe, recipe_file
    from .train import train_and_report

    path = recipe_file(args.recipe)
    if path != Path(args.recipe):
        print(f"verbo: training the shipped recipe {path}", file=sys.stderr)
    recipe = load_recipe(path, args.overrides)
    out = Path(args.out or Path("runs") / recipe.name)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet launched: start the processes, each runs this
        from .distributed import launch

        argv = ["train", str(path), *args.overrides, "--out", str(out)] + (["--resume"] if args.resume else [])
        if launch(args.nproc, argv, args.accelerate_config):
            raise VerboError(f"training in {args.nproc} processes failed (see their output above)")
        return
    train_and_report(recipe, out, resume=args.resume)
    print(f"run folder: {out}  (final model: {out / 'final'}, report: {out / 'report.md'})")


def cmd_merge(args) -> None:
    from .merge import merge_adapter

    print(merge_adapter(args.adapter, args.out, tolerance=args.tolerance).summary())


def cmd_eval(args) -> None:
    from .datatools import read_options
    from .evaluate.metrics import parse_metrics
    from .evaluate.run import evaluate

    out = Path(args.out or Path("eval") / Path(args.model).name)
    result = evaluate(args.model, args.data, out, parse_metrics(args.metrics), _decode_options(args),
                      args.batch_size, device=args.device, quantize=args.quantize, compiled=args.compile,
                      template=args.template, read=read_options(args))
    _print_scores(result)
    print(result.truncation)
    print(f"predictions and report: {out}")


def cmd_score(args) -> None:
    from .evaluate.metrics import parse_metrics
    from .evaluate.scoring import score_file

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


def cmd_caption(args) -> None:
    from .readers import image_files

    images = image_files(args.images)
    for image, caption in zip(images, _replies(args, images, args.prompt)):
        print(f"{image}\t{caption}")


def cmd_ask(args) -> None:
    print(_replies(args, [args.image], args.question)[0])


def _replies(args, images: list[str], prompt: str | None) -> list[str]:
    """The model's reply to `prompt` (None: the model's caption prompt) about each image; says on stderr how many
    hit the token limit, if any did."""
    from .infer import Truncation, prompt_record

    options = _decode_options(args)
    vlm = load_vlm(args)
    prompt = vlm.caption_prompt if prompt is None else prompt
    generations = vlm.generate_details([prompt_record(image, prompt) for image in images], options, args.batch_size)
    truncation = Truncation(options.max_new_tokens).add(g.finish_reason for g in generations)
    if truncation.truncated:
        print(f"{truncation} (raise --max-new-tokens for whole replies)", file=sys.stderr)
    return [g.text for g in generations]


# ------------------------------------------------------------------------------------------------ parser

EXAMPLES = {
    "quickstart": "examples:\n  verbo quickstart --out quickstart",
    "synth": "examples:\n  verbo data synth shapes --out data/shapes --n 3000 --seed 0 --langs en,pt\n"
             "  verbo data synth geometry --out data/geometry --n 1000",
    "build": "examples:\n  verbo build --vision google/siglip-base-patch16-224 --language Qwen/Qwen2.5-0.5B-Instruct "
             "--connector pixel_shuffle --act silu --factor 2 --image-token '<|image_pad|>' --out models/geovlm-init",
    "train": "examples:\n  verbo train recipes/quickstart.yaml data_root=data/shapes --out runs/qs\n"
             "  verbo train recipes/geovlm.yaml stages.0.lr=3e-4 stages.1.epochs=2 --out runs/geo\n"
             "  verbo train recipes/geovlm.yaml --out runs/geo --resume\n"
             "  verbo train recipes/geovlm.yaml --nproc 8 --accelerate-config configs/accelerate/zero2.yaml\n"
             "  accelerate launch --config_file configs/accelerate/fsdp.yaml -m verbovision train recipes/geovlm.yaml",
    "merge": "examples:\n  verbo merge runs/pt/stages/0-pretrain/adapter --out models/pt-merged\n"
             "  verbo merge runs/pt --out models/pt-merged      # the run's last adapter",
    "caption": "examples:\n  verbo caption runs/qs/final img1.png img2.png\n"
               "  verbo caption runs/qs/final photos/                # every image in the folder, by name\n"
               "  verbo caption runs/qs/final img.png --top-p 0.9 --temperature 0.7 --seed 0",
    "eval": "examples:\n  verbo eval runs/qs/final --data data/shapes/test/caption_short_en.json --out eval/qs\n"
            "  verbo eval llava-hf/llava-1.5-7b-hf --data vqa/test.json --metrics vqa,exact_match --out eval/llava\n"
            "  verbo eval runs/vit-gpt2/final --data annotations/captions_val2014.json --image-root val2014",
    "score": "examples:\n  verbo score eval/qs/predictions.jsonl --metrics cider,bleu\n"
             "  verbo score captions_val2014_fakecap_results.json --refs captions_val2014.json\n"
             "  verbo score vqa_results.json --refs v2_mscoco_val2014_annotations.json --metrics vqa\n"
             "  verbo score answers.jsonl --refs TextVQA_0.5.1_val.json --metrics textvqa\n"
             "  verbo score answers.jsonl --refs questions_with_answers.jsonl --metrics vqa,exact_match\n\n"
             "vqa is VQAv2 accuracy exactly as the official vqaEval.py computes it (it normalises the answers only\n"
             "when the 10 human answers are not all identical), per question, overall, and per answer and question\n"
             "type when the references give them; values print at full precision, as fractions, and as vqaEval.py's\n"
             "percentages rounded to 2 decimals ('vqaEval.py %'). textvqa is TextVQA accuracy as m4c's evaluator\n"
             "computes it (always normalised). A results file may cover part of the references; 'records' says\n"
             "how many items were scored.",
    "ask": "examples:\n  verbo ask runs/qs/final img.png \"How many shapes are there?\"",
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verbo",
        description="Build, train, fine-tune, evaluate and serve vision-language models.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, func, help, epilog_key=None, parent=sub):
        p = parent.add_parser(name, help=help, description=help, epilog=EXAMPLES.get(epilog_key or name),
                              formatter_class=HelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("quickstart", cmd_quickstart, "offline demo: synth data -> train -> eval -> captions -> report")
    p.add_argument("--out", default="quickstart", help="output folder (default: quickstart)")
    p.add_argument("--n", type=int, help="number of synthetic images (default 12000)")

    data = sub.add_parser("data", help="synthesize, check, clean, split and convert data").add_subparsers(dest="data_command", metavar="DATA_COMMAND",
                                                                          required=True)
    p = command("synth", cmd_data_synth, "write a synthetic dataset (LLaVA JSON + images, train/val/test)",
                parent=data)
    p.add_argument("kind", choices=["shapes", "geometry"])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, help="number of images (default 3000 shapes, 1000 geometry)")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same dataset")
    p.add_argument("--langs", default="en,pt", help="caption languages for shapes (en, pt)")
    from .datatools import add_data_commands, add_reading_options

    add_data_commands(data)

    p = command("build", cmd_build, "compose a pretrained vision encoder + connector + LM into a standard checkpoint")
    p.add_argument("--vision", required=True, help="hub id or directory of a vision encoder (SigLIP, CLIP, ViT...)")
    p.add_argument("--language", required=True, help="hub id or directory of a causal LM")
    p.add_argument("--connector", default="mlp", choices=["linear", "mlp", "pixel_shuffle"],
                   help="how image features become LM embeddings")
    p.add_argument("--act", default="gelu", choices=["gelu", "silu"], help="the connector's activation")
    p.add_argument("--factor", type=int, default=2, help="pixel_shuffle: s x s patches per image token")
    p.add_argument("--feature-layer", type=int, default=-1, help="encoder hidden state fed to the connector")
    p.add_argument("--image-token", default="<image>", help="the text token that stands for an image feature")
    p.add_argument("--out", required=True)

    p = command("train", cmd_train, "run a recipe's training stages")
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML, or the name of a shipped recipe (quickstart, "
                                                     "geovlm...: the files of recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override recipe keys")
    p.add_argument("--out", help="run folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes (GPUs, or CPU processes with gloo); batch_size is per process")
    p.add_argument("--accelerate-config", help="an Accelerate config (configs/accelerate/: DeepSpeed ZeRO-2/3, FSDP) "
                                               "to launch the --nproc processes with")

    p = command("merge", cmd_merge, "merge a LoRA adapter into its base (read from metadata) and verify the logits")
    p.add_argument("adapter", metavar="ADAPTER_OR_RUN")
    p.add_argument("--out", required=True)
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest logit difference accepted")

    metric_help = ("comma-separated: bleu, meteor, rouge_l, cider, spice, exact_match, vqa, textvqa, numeric, "
                   "choice, wer, cer")
    p = command("eval", cmd_eval, "generate on a dataset and score it: every metric with a bootstrap interval")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--data", required=True, help="data file or folder (any supported format)")
    add_reading_options(p)
    p.add_argument("--metrics", default="bleu,meteor,rouge_l,cider,exact_match", help=metric_help)
    p.add_argument("--out", help="evaluation folder (default: eval/<model name>)")
    _decode_args(p)

    p = command("score", cmd_score, "score a predictions file against references, no model needed")
    p.add_argument("predictions", metavar="PREDICTIONS",
                   help="our predictions.jsonl, LLaVA answers JSONL (question_id, text), VQAv2 results JSON "
                        "([{question_id, answer}]), or COCO caption results JSON ([{image_id, caption}])")
    p.add_argument("--refs", help="VQAv2 annotations JSON (v2_mscoco_*_annotations.json; the questions file is not "
                                  "needed), TextVQA JSON ({data: [...]}), JSON/JSONL with question_id and "
                                  "answers/answer, or COCO caption annotations JSON")
    p.add_argument("--metrics", default="bleu,meteor,rouge_l,cider", help=metric_help)
    p.add_argument("--out", help="also write report.json/report.md/metrics.png here")

    p = command("caption", cmd_caption, "caption images")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders whose images are all captioned")
    p.add_argument("--prompt", help="what to ask (default: the caption prompt the model was trained on, in its "
                                    "language, else its family's (PaliGemma: 'caption en'), else 'Describe the image "
                                    "briefly.')")
    _decode_args(p)

    p = command("ask", cmd_ask, "answer a question about an image")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("question")
    _decode_args(p)

    from . import chat, predict, serve

    for module in (predict, chat, serve):  # verbo predict, chat, serve and web
        module.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.func(args)
    except VerboError as e:
        print(f"verbo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("verbo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
