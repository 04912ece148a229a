"""`verbo predict`: answer a LLaVA questions JSONL into an answers JSONL (see `verbovision.predict`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..infer.predict import AnswerLog, PredictConfig, chunk, made_by, predict, read_questions
from .common import Command, add_decode_options, add_model_argument, decode_options_from_flags, load_vlm


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--questions", required=True, help="JSONL with question_id, image and text on each line")
    p.add_argument("--out", required=True, help="answers JSONL (appended to; answered questions are skipped)")
    p.add_argument("--image-folder", "--image-root", dest="image_folder",
                   help="folder of the images (default: the questions file's folder); --image-folder is LLaVA's name, "
                        "--image-root the other commands'")
    p.add_argument("--model-id", help="model_id written in each answer (default: MODEL)")
    p.add_argument("--num-chunks", type=int, default=PredictConfig.num_chunks,
                   help="split the questions into N contiguous chunks...")
    p.add_argument("--chunk-idx", type=int, default=PredictConfig.chunk_idx, help="...and answer chunk K (0-based)")
    add_decode_options(p)


def cmd_predict(args: argparse.Namespace) -> None:
    config = PredictConfig(Path(args.questions), Path(args.out), args.image_folder and Path(args.image_folder),
                           args.model_id or args.model, args.num_chunks, args.chunk_idx, args.batch_size,
                           decode_options_from_flags(args))
    # Checked before the model loads: a wrong chunk index, questions file or answers path should not cost a model load.
    chunk([], config.num_chunks, config.chunk_idx)
    questions = read_questions(config.questions, config.image_folder)
    if config.out.is_dir():
        raise ConfigError(f"--out {config.out}: a folder; give the answers file (JSONL) to write")
    AnswerLog(config.out).answered_ids(made_by(config))
    summary = predict(load_vlm(args), config, questions)
    print(summary, file=sys.stderr)
    print(config.out)


PREDICT = Command(
    "answer a LLaVA questions JSONL into an answers JSONL (batched, resumable)", _predict_arguments, cmd_predict,
    """examples:
  verbo predict runs/vqa/final --questions questions.jsonl --out answers.jsonl
  verbo predict runs/vqa/final --questions q.jsonl --image-folder images/ --out answers.jsonl --batch-size 32
  # split across 4 machines, then concatenate the 4 answer files:
  verbo predict runs/vqa/final --questions q.jsonl --out answers-2.jsonl --num-chunks 4 --chunk-idx 2
Re-running the same command after an interruption answers only the questions not answered yet.""",
    one_shot=True)
