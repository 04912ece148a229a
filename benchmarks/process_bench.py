"""Whole-process speed: `verbo caption` (and `verbo predict`) as a process against a plain transformers script, from
spawn to exit: imports, model and processor loading, images, generation and output all timed.

Captions the first --n held-out images of the quickstart data (test/caption_short_en.json), greedy, up to
--max-new-tokens tokens, three ways, each a fresh Python process:

- `plain script`: written by this benchmark to a temporary file; `generate_bench.PlainGenerate`
  (`AutoModelForImageTextToText` + `AutoProcessor`, left padding, the prompt in the model's template, greedy
  `model.generate`) on batches of `infer.options.BATCH_SIZE` images, the batch size `verbo caption` uses by default;
  prints `image<TAB>caption` lines as `verbo caption` does;
- `verbo caption MODEL IMAGES...`;
- `verbo predict MODEL --questions Q --out A`: the same images, each asked the caption prompt, from a questions JSONL.

The script fails unless all three give identical captions. The variants alternate round by round (their order too),
after one untimed run of each (files in the page cache, bytecode compiled); reported: best and median wall time of
--repeats runs each, and the CPU time (user + system) the process used, which other jobs on the machine disturb
less. Every process gets the same torch thread count (--threads, via OMP_NUM_THREADS; checked in a child process).

    python benchmarks/process_bench.py [--model quickstart/run/final] [--data quickstart/data/shapes] [--n 256]
    python benchmarks/process_bench.py --no-record     # print the table only, nothing appended to RESULTS.md
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import held_out_records, publish, quickstart_options

BENCHMARKS = Path(__file__).resolve().parent

PLAIN_SCRIPT = f"""
import sys

sys.path.insert(0, {str(BENCHMARKS)!r})
from generate_bench import PlainGenerate  # imports torch and transformers where the model loads

model, prompt, max_new_tokens, batch_size, *paths = sys.argv[1:]
caption, batch_size = PlainGenerate(model, prompt, int(max_new_tokens)), int(batch_size)
for start in range(0, len(paths), batch_size):
    batch = paths[start : start + batch_size]
    for path, text in zip(batch, caption(batch)):
        print(f"{{path}}\\t{{text}}")
"""


def child_env(threads: int) -> dict:
    """The environment of every timed process: offline, quiet, the same torch threads."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds from spawn to exit, CPU seconds (user + system) of the process, its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, done.stdout


def caption_lines(stdout: str) -> list[str]:
    return [line.split("\t", 1)[1] for line in stdout.splitlines()]


def main() -> None:
    parser = quickstart_options(__doc__)
    parser.set_defaults(n=256, repeats=5)
    args = parser.parse_args()

    from verbovision.data.records import CAPTION_PROMPT
    from verbovision.infer.options import BATCH_SIZE

    paths = [str(r.images[0]) for r in held_out_records(args)]
    env = child_env(args.threads)
    work = Path(tempfile.mkdtemp(prefix="process-bench-"))
    script, questions, answers = work / "plain.py", work / "questions.jsonl", work / "answers.jsonl"
    script.write_text(PLAIN_SCRIPT)
    questions.write_text("".join(json.dumps({"question_id": i, "image": str(Path(p).resolve()), "text": CAPTION_PROMPT})
                                 + "\n" for i, p in enumerate(paths)))
    verbo = [sys.executable, "-m", "verbovision"]
    commands = {"plain script": [sys.executable, str(script), args.model, CAPTION_PROMPT, str(args.max_new_tokens),
                                 str(BATCH_SIZE), *paths],
                "verbo caption": [*verbo, "caption", args.model, *paths, "--max-new-tokens", str(args.max_new_tokens)],
                "verbo predict": [*verbo, "predict", args.model, "--questions", str(questions), "--out", str(answers),
                                  "--max-new-tokens", str(args.max_new_tokens)]}

    def run(name: str) -> tuple[float, float, list[str]]:
        answers.unlink(missing_ok=True)  # predict resumes: an answered question would be skipped
        wall, cpu, stdout = timed(commands[name], env)
        if name != "verbo predict":
            return wall, cpu, caption_lines(stdout)
        return wall, cpu, [json.loads(line)["text"] for line in answers.read_text().splitlines()]

    threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    load_start = os.getloadavg()[0]
    texts = {name: run(name)[2] for name in commands}  # warm-up, and the captions compared
    reference = texts["plain script"]
    for name, replies in texts.items():
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(reference, replies)) if a != b]
        assert len(replies) == len(reference) == len(paths) and not diff, f"{name} differs: {diff[:3]}"
    walls = {name: [] for name in commands}
    cpus = {name: [] for name in commands}
    for round_ in range(args.repeats):
        for name in list(commands) if round_ % 2 == 0 else reversed(commands):
            wall, cpu, _ = run(name)
            walls[name].append(wall)
            cpus[name].append(cpu)
    report(args, len(paths), BATCH_SIZE, threads, walls, cpus, load_start)


def report(args, n: int, batch_size: int, threads: str, walls: dict, cpus: dict, load_start: float) -> None:
    import torch
    import transformers

    plain = "plain script"
    lines = ["## Whole-process speed (benchmarks/process_bench.py)", "",
             f"model {args.model}; the first {n} held-out images of {args.data}/test/caption_short_en.json, greedy, "
             f"up to {args.max_new_tokens} new tokens, batches of {batch_size}; each variant a fresh process, timed "
             "from spawn to exit (imports, model loading, images, generation, output); the plain script is "
             "`generate_bench.PlainGenerate` (`AutoModelForImageTextToText` + `AutoProcessor`, left padding, "
             "`model.generate`); all give identical captions (asserted); best and median of "
             f"{args.repeats} runs each, variants alternated, after one untimed run of each; CPU: user + system "
             f"seconds of the process; {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
             f"torch threads: {threads} in every process (OMP_NUM_THREADS), torch {torch.__version__}, transformers "
             f"{transformers.__version__}, Python {platform.python_version()}; load average {load_start:.1f} at the "
             f"start and {os.getloadavg()[0]:.1f} at the end (other jobs share the machine).", "",
             "| variant | wall s, best | wall s, median | CPU s, best | CPU s, median | vs plain, best wall | "
             "vs plain, median wall | vs plain, median CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in walls:
        best, median, cpu = min(walls[name]), statistics.median(walls[name]), statistics.median(cpus[name])
        lines.append(f"| {name} | {best:.2f} | {median:.2f} | {min(cpus[name]):.2f} | {cpu:.2f} | "
                     f"{min(walls[plain]) / best:.2f}x | {statistics.median(walls[plain]) / median:.2f}x | "
                     f"{statistics.median(cpus[plain]) / cpu:.2f}x |")
    publish("\n".join(lines + [""]), record=not args.no_record)


if __name__ == "__main__":
    main()
