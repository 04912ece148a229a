"""The `verbo` CLI: real commands on real files, one-line errors on bad input."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import verbovision
from verbovision.cli import main, make_parser
from verbovision.cli.common import load_vlm, pause_collector
from verbovision.cli.evaluate import default_out
from verbovision.config.parse import load_recipe
from verbovision.data.synth import synth_shapes
from verbovision.evaluate.report import CUT_MARK
from verbovision.infer.messages import prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.train.report import sample_captions, write_report

from .helpers import SAMPLED, limit_cutting_some


def verbo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verbovision", *args], capture_output=True, text=True, timeout=300)


def test_train_writes_report(lora_run):
    report = (lora_run / "report.md").read_text()
    assert "## Sample outputs" in report and "loss.png" in report and "Skipped records" in report


def test_report_samples_say_which_replies_were_cut(lora_run, tmp_path):
    recipe = load_recipe(lora_run / "config.yaml")
    samples = sample_captions(lora_run / "final", recipe, options=DecodeOptions(64, **SAMPLED))
    records = [prompt_record(s["image"], s["prompt"]) for s in samples]
    limit, cut = limit_cutting_some(VLM(lora_run / "final").generate_details(records, DecodeOptions(64, **SAMPLED)))

    samples = sample_captions(lora_run / "final", recipe, options=DecodeOptions(limit, **SAMPLED))
    assert [s["finish_reason"] for s in samples] == ["length" if c else "stop" for c in cut]
    report = write_report(tmp_path, samples).read_text()
    assert f"truncated: {sum(cut)} of {len(cut)} replies hit max_new_tokens={limit}" in report
    rows = [line for line in report.splitlines() if line.startswith("| `")]
    assert [CUT_MARK in row for row in rows] == cut


def test_merge_command_reads_base_from_metadata(lora_run, tmp_path, capsys):
    assert main(["merge", str(lora_run), "--out", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    assert "max |logit difference|" in out and "stages/0-full/model" in out
    merge = json.loads((tmp_path / "merged/verbovision.json").read_text())["merge"]
    # auto dtype: float32 on the CPU (tolerance 1e-4), bfloat16 on a GPU (a tolerance that scales with the logits)
    assert merge["max_abs_diff"] <= merge["tolerance"] and merge["max_abs_diff_reloaded"] <= merge["tolerance"]


def test_caption_and_ask(lora_run, shapes_data, capsys):
    images = sorted((shapes_data / "images").glob("*.png"))[:3]
    assert main(["caption", str(lora_run / "final"), *map(str, images), "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in images]
    replies = VLM(lora_run / "final").generate_details([prompt_record(p, "Describe the image briefly.") for p in images],
                                                       DecodeOptions(8))
    cut = sum(g.finish_reason == "length" for g in replies)
    assert (f"truncated: {cut} of 3 replies hit max_new_tokens=8" in printed.err) == (cut > 0)
    assert main(["ask", str(lora_run / "final"), str(images[0]), "How many shapes are there?", "--beams", "2"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_caption_as_a_program_prints_every_caption(lora_run, shapes_data, capsys):
    """The `verbo` program ends after `caption` without the interpreter's teardown: everything printed still
    arrives (stdout into a pipe is buffered until flushed)."""
    images = [str(p) for p in sorted((shapes_data / "images").glob("*.png"))[:20]]
    model = str(lora_run / "final")
    assert main(["caption", model, *images, "--max-new-tokens", "8"]) == 0
    done = verbo("caption", model, *images, "--max-new-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert done.stdout == capsys.readouterr().out


def test_one_shot_commands_collect_garbage_again_once_the_model_is_loaded(lora_run):
    """The program pauses the garbage collector for a one-shot command; loading its model resumes it, with what
    startup made frozen out of later collections."""
    args = make_parser().parse_args(["caption", str(lora_run / "final"), "image.png"])
    assert args.one_shot and not make_parser().parse_args(["merge", "run", "--out", "merged"]).one_shot
    pause_collector()
    try:
        assert not gc.isenabled()
        load_vlm(args)
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


def test_python_api_batches_like_one_by_one(lora_run, shapes_data):
    model = verbovision.load(str(lora_run / "stages/0-full/model"), device="cpu")
    images = [Image.open(p) for p in sorted((shapes_data / "images").glob("*.png"))[:5]]
    batched = model.caption(images, batch_size=5)
    single = [model.caption([image], batch_size=1)[0] for image in images]
    assert batched == single
    sampled = [model.caption(images[:2], options=DecodeOptions(top_p=0.9, temperature=1.5, seed=7)) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_compiled_generation_gives_the_same_captions(lora_run, shapes_data, capsys):
    images = [str(p) for p in sorted((shapes_data / "images").glob("*.png"))[:4]]
    model = str(lora_run / "stages/0-full/model")
    outputs = []
    for flags in ([], ["--compile"]):  # static KV cache + torch.compile (inductor)
        assert main(["caption", model, *images, "--max-new-tokens", "8", "--batch-size", "4", *flags]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 4


def test_synth_command(tmp_path, capsys):
    assert main(["data", "synth", "geometry", "--out", str(tmp_path / "geo"), "--n", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 5
    # geometry is English only: --langs pt is an error, not an English dataset
    assert main(["data", "synth", "geometry", "--out", str(tmp_path / "geo-pt"), "--n", "5", "--langs", "pt"]) == 2
    assert capsys.readouterr().err.strip() == ("verbo: error: --langs pt: geometry's captions and questions are "
                                               "English only; --langs chooses the languages of shapes")
    assert not (tmp_path / "geo-pt").exists()


@pytest.mark.parametrize("argv,message", [
    (["synth", "shapes", "--out", "{tmp}/s", "--n", "0"], "--n 0: a dataset needs at least 1 image"),
    (["synth", "shapes", "--out", "{tmp}/s", "--n", "4", "--langs", "en,xx"], "--langs en,xx: choose among en,pt"),
    (["synth", "geometry", "--out", "{tmp}/file/s", "--n", "4"], "{tmp}/file is a file, not a folder"),
    (["clean", "{tmp}/d.json", "--out", "{tmp}/file"], "{tmp}/file is a file, not a folder"),
    (["split", "{tmp}/d.json", "--out", "{tmp}/file"], "{tmp}/file is a file, not a folder"),
    (["convert", "{tmp}/d.json", "--out", "{tmp}/file/d.json"], "{tmp}/file is a file, not a folder"),
    (["convert", "{tmp}/d.json", "--out", "{tmp}"], "a folder; name the file to write"),
])
def test_data_commands_refuse_what_they_cannot_write_in_one_line(tmp_path, capsys, argv, message):
    Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
    (tmp_path / "d.json").write_text(json.dumps([{"id": "0", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": "a red square"}]}]))
    (tmp_path / "file").write_text("not a folder")
    assert main(["data", *(arg.format(tmp=tmp_path) for arg in argv)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("verbo: error: --") and message.format(tmp=tmp_path) in line


def test_quickstart_refuses_what_it_cannot_do_in_one_line(tmp_path, capsys):
    # --n 0 synthesized the default 12,000 images; an --out under a file was a NotADirectoryError
    (tmp_path / "file").write_text("not a folder")
    for argv, message in ((["--n", "0"], "--n 0: the demo needs at least 1 image"),
                          ([], f"{tmp_path / 'file'} is a file, not a folder")):
        assert main(["quickstart", "--out", str(tmp_path / "file/qs"), *argv]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("verbo: error: --") and message in line


def test_quickstart_rerun_with_another_n_is_refused_not_run_on_the_earlier_images(tmp_path, capsys):
    """`verbo quickstart --out qs --n 100` over a quickstart of 60 images trained and evaluated on the 60 (its
    dataset was there), exit 0: the --n asked for was silently not used."""
    synth_shapes(tmp_path / "data/shapes", n=6, seed=0, langs=("en",))
    assert main(["quickstart", "--out", str(tmp_path), "--n", "8"]) == 2
    assert capsys.readouterr().err == (f"verbo: error: --out {tmp_path}: holds a quickstart on 6 images; rerun it "
                                       "with --n 6, or choose another --out for 8\n")
    assert not (tmp_path / "run").exists()


def test_output_to_a_reader_that_left_is_no_traceback(shapes_data):
    # `verbo data check DATA --json | head -1`: the reader may close the pipe before verbo writes
    command = [sys.executable, "-m", "verbovision", "data", "check", str(shapes_data / "val/vqa_en.json"), "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    assert process.wait(timeout=300) == 1 and process.stderr.read() == ""


def test_errors_are_one_line(tmp_path, shapes_data):
    result = verbo("train", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"verbo: error: {tmp_path / 'missing.yaml'}: recipe not found; "
                                                  "give a recipe YAML file or the name of a shipped recipe "
                                                  "(quickstart, geovlm...)"]
    # the README's recipes/NAME.yaml run outside a checkout of the repository
    result = verbo("train", str(tmp_path / "recipes/geovlm.yaml"))
    assert result.stderr.strip().splitlines() == [f"verbo: error: {tmp_path / 'recipes/geovlm.yaml'}: recipe not "
                                                  "found; the shipped geovlm recipe is `verbo train geovlm`"]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    result = verbo("caption", str(tmp_path), str(bad))
    assert result.returncode == 2 and "not a model directory" in result.stderr and "Traceback" not in result.stderr


def test_unreadable_image_error_names_the_file(lora_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    result = verbo("caption", str(lora_run / "final"), str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"verbo: error: {bad}: unreadable image")


def test_an_unreadable_image_fails_caption_before_any_reply(lora_run, shapes_data, tmp_path, monkeypatch, capsys):
    from verbovision.infer.vlm import VLM

    bad = tmp_path / "z-bad.png"  # captioned last, in a batch of its own
    bad.write_bytes(b"\x89PNG broken")
    replies = []
    generate_details = VLM.generate_details

    def counted(self, *args, **kwargs):
        replies.append(1)
        return generate_details(self, *args, **kwargs)

    monkeypatch.setattr(VLM, "generate_details", counted)
    images = [*map(str, sorted((shapes_data / "images").glob("*.png"))[:2]), str(bad)]
    assert main(["caption", str(lora_run / "final"), *images, "--batch-size", "2", "--max-new-tokens", "2"]) == 2
    assert capsys.readouterr().err.startswith(f"verbo: error: {bad}: unreadable image") and not replies


def test_max_new_tokens_flag_defaults_to_decode_options():
    args = make_parser().parse_args(["ask", "model", "image.png", "question"])
    assert args.max_new_tokens == DecodeOptions().max_new_tokens
    assert f"(default: {DecodeOptions().max_new_tokens})" in " ".join(verbo("ask", "--help").stdout.split())


def subcommand_parsers(parser=None):
    """Every leaf `verbo` subcommand parser (`data clean`, `serve`, ...)."""
    import argparse

    parser = parser or make_parser()
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        yield parser
    for action in children:
        for child in action.choices.values():
            yield from subcommand_parsers(child)


def test_every_default_is_shown_in_help():
    parsers = list(subcommand_parsers())
    assert len(parsers) >= 17
    for parser in parsers:
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
                shown = parser._get_formatter()._expand_help(action) if action.help else ""
                assert "default" in shown, f"{parser.prog} {action.option_strings[0]}: default not in --help"
    clean = " ".join(verbo("data", "clean", "--help").stdout.split())
    assert "shortest caption, in words (answers to questions only need one) (default: 3)" in clean
    assert "smallest image side, px (default: 32)" in " ".join(verbo("data", "check", "--help").stdout.split())


def test_help_lists_commands_with_examples():
    result = verbo("--help")
    for command in ("quickstart", "data", "build", "train", "merge", "eval", "score", "caption", "ask", "predict", "chat",
                    "serve", "web"):
        assert command in result.stdout
    assert "examples:" in verbo("train", "--help").stdout


def test_quickstart_path_end_to_end_in_small(tmp_path, capsys):
    """What `make demo` runs, on 60 images and a few steps: synthesize, train, evaluate, caption, report."""
    from verbovision.quickstart import quickstart

    values = quickstart(tmp_path, n=60, overrides=["stages.0.max_steps=3", "stages.0.batch_size=8"])
    assert 0.0 <= values["exact_match"] <= 1.0 and "CIDEr" in values
    out = capsys.readouterr().out
    assert "[4/4] captions of test images" in out and "exact match" in out
    assert (tmp_path / "run/report.md").exists() and (tmp_path / "run/samples.png").exists()


def test_the_cli_runs_as_a_module():
    """`python -m verbovision` and, as before the cli became a package, `python -m verbovision.cli`."""
    helps = [subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
             for module in ("verbovision", "verbovision.cli")]
    assert [done.returncode for done in helps] == [0, 0]
    assert helps[0].stdout == helps[1].stdout == make_parser().format_help()


def test_help_loads_neither_torch_nor_transformers():
    """`verbo --help` (and a mistyped command) builds every command's parser: none may import the heavy stack, or
    each of them waits seconds for it."""
    script = ("import sys; from verbovision.cli import make_parser; make_parser(); "
              "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_train_takes_its_process_count_from_the_accelerate_config(tmp_path, monkeypatch):
    """`--accelerate-config F` without --nproc launches F's num_processes (it was ignored: one process, no config);
    --nproc overrides it."""
    from verbovision.train import distributed

    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv, config: launched.append((nproc, config)) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    config = tmp_path / "zero2.yaml"
    config.write_text("distributed_type: DEEPSPEED\nnum_processes: 3\n")
    out = str(tmp_path / "run")
    assert main(["train", "quickstart", "--out", out, "--accelerate-config", str(config)]) == 0
    assert main(["train", "quickstart", "--out", out, "--accelerate-config", str(config), "--nproc", "2"]) == 0
    assert launched == [(3, str(config)), (2, str(config))]


def test_eval_folder_defaults_to_the_model_name_and_a_run_final_to_its_run():
    assert default_out("runs/qs/final") == Path("eval/qs")  # not eval/final for every run's final model
    assert default_out("runs/pt/stages/0-pretrain/adapter") == Path("eval/adapter")
    assert default_out("llava-hf/llava-1.5-7b-hf") == Path("eval/llava-1.5-7b-hf")
    assert default_out("final") == Path("eval/final")
