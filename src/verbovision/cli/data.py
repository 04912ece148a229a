"""`verbo data synth|check|clean|split|convert`: make and prepare datasets (see `verbovision.datatools`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import DataError
from ..files import blocking_file
from .common import Command, CommandGroup, add_reading_options, read_options


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["shapes", "geometry"])
    p.add_argument("--out", required=True, help="output folder: images/, LLaVA JSON files in train/, val/, test/")
    p.add_argument("--n", type=int, help="number of images (default: 3000 shapes, 1000 geometry)")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same dataset")
    p.add_argument("--langs", help="caption languages of shapes (en, pt; default: en,pt); geometry is English only")


def cmd_data_synth(args: argparse.Namespace) -> None:
    from ..data.synth import SUPPORTED_LANGS, synth_shapes
    from ..data.synth_geometry import synth_geometry

    if args.n is not None and args.n < 1:
        raise DataError(f"--n {args.n}: a dataset needs at least 1 image")
    _check_out(args.out, folder=True)
    if args.kind == "shapes":
        langs = tuple(x.strip() for x in (args.langs or "en,pt").split(",") if x.strip())
        if not langs or not set(langs) <= set(SUPPORTED_LANGS):
            raise DataError(f"--langs {args.langs}: choose among {','.join(SUPPORTED_LANGS)}")
        summary = synth_shapes(args.out, n=args.n or 3000, seed=args.seed, langs=langs)
    elif args.langs:
        raise DataError(f"--langs {args.langs}: geometry's captions and questions are English only; "
                        "--langs chooses the languages of shapes")
    else:
        summary = synth_geometry(args.out, n=args.n or 1000, seed=args.seed)
    print(json.dumps(summary, indent=1, ensure_ascii=False))


def _check_out(out: str, folder: bool) -> None:
    """An --out that cannot be written (a file where a folder goes, a folder where the file goes) is a one-line error
    before any work, not an OSError after it."""
    path = Path(out)
    if not folder and path.is_dir():
        raise DataError(f"--out {out}: a folder; name the file to write, e.g. {path / 'data.json'}")
    blocking = blocking_file(path if folder else path.parent)
    if blocking:
        raise DataError(f"--out {out}: {blocking} is a file, not a folder; choose another --out")


def _data_path_arguments(p: argparse.ArgumentParser) -> None:
    """The data path every command but synth reads, and how to read it; listed first in their --help."""
    p.add_argument("data", metavar="DATA", help="data file or folder (format detected; see --format)")
    add_reading_options(p)


def _check_arguments(p: argparse.ArgumentParser) -> None:
    from ..config.schema import Stage
    from ..config.sources import TEMPLATES
    from ..data.check import CheckOptions

    _data_path_arguments(p)
    p.add_argument("--min-size", type=int, default=CheckOptions.min_size, help="smallest image side, px")
    p.add_argument("--model", help="also tokenize with this model (directory or hub id) to find too-long records")
    p.add_argument("--max-length", type=int, help=f"with --model: longest record, in tokens (default: "
                                                  f"{Stage.max_length}, a stage's)")
    p.add_argument("--template", choices=TEMPLATES, help="with --model: prompt template (default: model's)")
    p.add_argument("--allow", action="store_true", help="exit 0 even when problems are found (not when no record "
                                                         "is usable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_check(args: argparse.Namespace) -> None:
    from ..config.schema import Stage
    from ..data.check import CheckOptions, check_data
    from ..data.records import require_usable
    from ..model.store import records_encoder

    if not args.model and (args.max_length is not None or args.template):
        raise DataError("--max-length and --template say how --model would encode the records; give --model too")
    length = Stage.max_length if args.max_length is None else args.max_length
    encoder = records_encoder(args.model, args.template, length) if args.model else None
    report = check_data(args.data, read_options(args), CheckOptions(min_size=args.min_size), encoder)
    print(json.dumps(report.as_dict(), indent=1, ensure_ascii=False) if args.json else report.summary())
    require_usable(report.records - len(report.problems), report.problems, f"records in {args.data}")  # --allow too
    if len(report.problems) and not args.allow:
        raise DataError(f"{args.data}: {len(report.problems)} of {report.records} records have problems "
                        "(pass --allow to accept them; training skips and counts them)")


def _clean_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.clean import CleanOptions

    _data_path_arguments(p)
    p.add_argument("--out", required=True, help="output folder: data.json, images/, removed.jsonl")
    p.add_argument("--min-size", type=int, default=CleanOptions.min_size, help="smallest image side, px")
    p.add_argument("--min-words", type=int, default=CleanOptions.min_words,
                   help="shortest caption, in words (answers to questions only need one)")
    p.add_argument("--max-words", type=int, default=CleanOptions.max_words,
                   help="longest caption, in words (answers to questions are not limited)")
    p.add_argument("--near-duplicates", type=int, default=CleanOptions.near_duplicates, metavar="BITS",
                   help="dHash distance (of 64 bits) that makes images near-duplicates; -1 keeps them")
    p.add_argument("--langs", help="keep replies in these languages only, e.g. pt or en,pt (heuristic guess)")
    p.add_argument("--link", action="store_true", help="hard-link images instead of copying them")


def cmd_clean(args: argparse.Namespace) -> None:
    from ..data.clean import CleanOptions, clean_data

    langs = tuple(x.strip() for x in (args.langs or "").split(",") if x.strip())
    _check_out(args.out, folder=True)
    options = CleanOptions(min_size=args.min_size, min_words=args.min_words, max_words=args.max_words,
                           near_duplicates=args.near_duplicates, langs=langs, link=args.link)
    print(clean_data(args.data, args.out, read_options(args), options).summary())


def _split_arguments(p: argparse.ArgumentParser) -> None:
    _data_path_arguments(p)
    p.add_argument("--out", required=True, help="output folder: one LLaVA JSON per split")
    p.add_argument("--ratios", default="0.8,0.1,0.1",
                   help="relative split sizes, scaled to sum to 1 (8,1,1 is 0.8,0.1,0.1; default: %(default)s)")
    p.add_argument("--names", help="split names (default: train,val,test)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same split")


def cmd_split(args: argparse.Namespace) -> None:
    from ..data.convert import split_data

    try:
        ratios = [float(x) for x in args.ratios.split(",")]
    except ValueError:
        raise DataError(f"--ratios {args.ratios!r}: expected comma-separated numbers like 0.8,0.1,0.1") from None
    names = args.names.split(",") if args.names else None
    _check_out(args.out, folder=True)
    sizes, skips = split_data(args.data, args.out, ratios, args.seed, names, read_options(args))
    for name, n in sizes.items():
        print(f"{Path(args.out) / (name + '.json')}: {n} records")
    _print_skips(skips)
    # An earlier split's file left beside these (its test.json after a train,val split) shares their records.
    others = sorted(f.name for f in Path(args.out).glob("*.json") if f.stem not in sizes)
    if others:
        print(f"verbo: note: {args.out} also holds {', '.join(others)}, not written by this split (an earlier one's? "
              "their records may be in these splits too): delete them before using the folder", file=sys.stderr)


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    _data_path_arguments(p)
    p.add_argument("--to", choices=["llava"], default="llava", help="output format")
    p.add_argument("--out", required=True, help="output JSON file (.jsonl: one record a line)")


def cmd_convert(args: argparse.Namespace) -> None:
    from ..data.convert import convert_data

    _check_out(args.out, folder=False)
    n, skips = convert_data(args.data, args.out, read_options(args))
    print(f"{args.out}: {n} records ({args.to})")
    _print_skips(skips)


def _print_skips(skips) -> None:
    for reason, info in skips.as_dict().items():
        print(f"skipped {info['count']} ({reason}), e.g. {', '.join(info['examples'])}; `verbo data check` says why")


CLEANING_RULES = """removed: unreadable, missing or too small images (--min-size), exact duplicate images (the same
pixels) and near-duplicates (--near-duplicates), captions shorter than --min-words or longer than
--max-words, answers without a word, replies in other languages (--langs). A caption is a reply to a
prompt that asks no question (no '?': 'Describe the image.'); a reply to a question is an answer,
where 'yes' or '4' is fine. Every removal is in removed.jsonl with its reason."""

DATA = CommandGroup("synthesize, check, clean, split and convert data", {
    "synth": Command(
        "write a synthetic dataset (LLaVA JSON + images, train/val/test)", _synth_arguments, cmd_data_synth,
        "examples:\n  verbo data synth shapes --out data/shapes --n 3000 --seed 0 --langs en,pt\n"
        "  verbo data synth geometry --out data/geometry --n 1000"),
    "check": Command(
        "validate every record and report problems by kind (exit status 2 on problems)", _check_arguments, cmd_check,
        "examples:\n  verbo data check data/train.json\n"
        "  verbo data check captions.csv --image-column path --text-column caption\n"
        "  verbo data check annotations/captions_val2014.json --image-root val2014 --model runs/qs/final\n"
        "  verbo data check shards/ --allow --json > report.json"),
    "clean": Command(
        "drop corrupt/tiny/duplicate images and bad captions; log each removal", _clean_arguments, cmd_clean,
        "examples:\n  verbo data clean data/raw.json --out data/clean\n"
        "  verbo data clean pokemon/ --out data/clean --min-size 64 --max-words 60 --langs pt --link\n"
        "  verbo data clean detailed.json --out data/clean --max-words 400   # long descriptions are the point\n\n"
        + CLEANING_RULES),
    "split": Command(
        "split into train/val/test, grouped by image (an image is in one split only)", _split_arguments, cmd_split,
        "examples:\n  verbo data split data/clean/data.json --out data/splits\n"
        "  verbo data split data.json --ratios 0.9,0.1 --names train,val --seed 1 --out data/splits"),
    "convert": Command(
        "convert a dataset to LLaVA JSON", _convert_arguments, cmd_convert,
        "examples:\n  verbo data convert annotations/captions_train2014.json --to llava --out data/coco.json\n"
        "  verbo data convert shards/ --to llava --out data/wds.json   # members extracted to wds_images/"),
}, dest="data_command", metavar="DATA_COMMAND")
