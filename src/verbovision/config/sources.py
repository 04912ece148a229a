"""A stage's data files as a recipe names them, and the template and truncation choices."""

from __future__ import annotations

from dataclasses import dataclass

TRUNCATION = ("drop", "truncate")
"""What training does with a record longer than max_length: skip and count it, or cut its text after the images."""

TEMPLATES = ("chat", "plain", "caption", "prefix")
"""How `Encoder` lays out a conversation: the model's chat template, or one of VerboVision's layouts."""


@dataclass
class Source:
    """One data file of a stage, with its mixing weight."""

    path: str
    """Data file or folder in any supported format (LLaVA JSON/JSONL, COCO, CSV, imagefolder, webdataset, parquet)."""
    weight: float = 1.0
    """Fraction of the file's records drawn per epoch (2.0 = each record twice, 0.5 = a random half)."""
    format: str | None = None
    """Data format (llava, coco, pairs, imagefolder, webdataset, hf, hf-stream); null detects it from the path
    (hf-stream, a Hugging Face dataset streamed as it trains, is never detected: `path` may be a hub id)."""
    split: str | None = None
    """Split of a Hugging Face dataset (hf-stream); default train. For a Karpathy file (dataset_coco.json...), a
    saved DatasetDict, parquet files named after their splits (train-00000-of-00001.parquet) or an imagefolder of
    split folders (train/, test/), the splits to read, comma-separated (train,restval; val): required where it holds
    several."""
    image_root: str | None = None
    """Folder relative image paths start from (relative to data_root); default: the data file's folder, and for COCO
    annotations a guess near the file (images/, the split folder its name mentions). `--image-root` of `verbo data`."""
    image_column: str | None = None
    """Column of flat rows (CSV/JSON/JSONL pairs, imagefolder metadata, parquet) holding the image; default: the
    first of the common names present (image, image_path, file_name, path...: data.rows.IMAGE_COLUMNS).
    `--image-column` of `verbo data`."""
    text_column: str | None = None
    """Column of flat rows holding the caption or answer; default: the first of the common names present (caption,
    text, answer...: data.rows.TEXT_COLUMNS). `--text-column` of `verbo data`."""
    question_column: str | None = None
    """Column of flat rows holding the question; default: question, instruction, prompt or query (a row without one
    is a caption record). `--question-column` of `verbo data`."""
    prompt: str | None = None
    """User turn of caption records (rows without a question); default: "Describe the image briefly."."""
