"""`verbo eval`: generate a reply per record, score it against the record's references, and write the evaluation
folder (see report.py), each metric with a bootstrap confidence interval over items, the loss and perplexity of the
references, and how many replies hit the token limit."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..data.readers import detect_format
from ..data.rows import ReadOptions
from ..data.sources import read_records
from ..errors import DataError
from ..files import write_json
from ..infer.options import BATCH_SIZE
from .metrics import DEFAULT_METRICS, EvalResult, check_references, score
from .report import write_eval_folder


def evaluate(model: str | Path, data: str | Path, out: str | Path, metrics: Sequence[str] = DEFAULT_METRICS,
             options=None, batch_size: int = BATCH_SIZE, data_format: str | None = None, with_loss: bool = True,
             device: str | None = None, quantize: str = "none", compiled: bool = False, read=None,
             template: str | None = None, dtype: str | None = None, backend=None) -> EvalResult:
    """Generate on every record of `data` (read with `read`, data.rows.ReadOptions), score, and write the evaluation
    folder. `backend`, e.g. an `infer.endpoint.Endpoint`, generates instead of the model loaded from `model` (then
    only a name): anything with `VLM.generate_details`; one without the VLM's encoder gives no loss, and says why
    in `loss_unavailable`."""
    from ..infer.options import DecodeOptions, Truncation
    from ..infer.vlm import VLM

    out = Path(out)
    options = options or DecodeOptions()
    is_coco = data_format == "coco" or (data_format is None and Path(data).is_file() and
                                        detect_format(Path(data)) == "coco")
    read = replace(read or ReadOptions(), several_splits=_SEVERAL_SPLITS.format(folder=Path(data).parent))
    records = [r for r in read_records(data, format=data_format, options=read) if r.references]
    if not records:
        raise DataError(f"{data}: no records with references to evaluate against")
    check_unique_ids(data, records)
    try:
        check_references({r.id: r.references for r in records}, metrics)
    except DataError as e:
        raise DataError(f"{data}: {e}") from None
    check_images(data, records)
    vlm = backend or VLM(model, device=device, quantize=quantize, compiled=compiled, template=template, dtype=dtype)
    generations = vlm.generate_details(records, options, batch_size)
    rows = [{"id": r.id, "image": str(r.images[0]) if r.images else None, "prompt": r.prompt_turns[-1].text,
             "prediction": g.text, "finish_reason": g.finish_reason, "references": r.references}
            for r, g in zip(records, generations)]
    result = score({row["id"]: row["prediction"] for row in rows}, {row["id"]: row["references"] for row in rows},
                   metrics)
    result.predictions = rows
    result.truncation = Truncation(options.max_new_tokens).add(g.finish_reason for g in generations)
    if with_loss and getattr(vlm, "loss_unavailable", None):
        result.skipped.update(dict.fromkeys(("val_loss", "perplexity"), vlm.loss_unavailable))
    elif with_loss:
        loss = reference_loss(vlm, records, batch_size)
        result.values.update({"val_loss": loss, "perplexity": math.exp(min(loss, 50))})
    write_eval_folder(out, result, {"model": str(model), "data": str(data)})
    if is_coco:
        write_json(out / COCO_RESULTS, [{"image_id": coco_image_id(row["id"]), "caption": row["prediction"]}
                                        for row in rows])
    return result


COCO_RESULTS = "captions_results.json"
"""Beside predictions.jsonl where the data is COCO caption annotations: the replies in COCO's results format
([{image_id, caption}]), what the COCO caption evaluation code and evaluation server read."""


def coco_image_id(record_id: str) -> int | str:
    """The COCO image id a record id was made from (`read_coco`: str(image_id)); COCO's own ids are integers."""
    return int(record_id) if record_id.isdigit() else record_id


_SEVERAL_SPLITS = ("--data scores every record, training images too: score its test split with --benchmark "
                   "coco-karpathy (or flickr30k) --data-dir {folder}")
"""`verbo eval --data`'s `ReadOptions.several_splits`: Karpathy's files hold every split of their images."""


def check_unique_ids(data: str | Path, records) -> None:
    """Scores are kept by record id: records sharing one would be scored as one (the last reply), while every row
    is written and counted, and `verbo score` refuses such a predictions file. Refused before the model loads."""
    counts = Counter(record.id for record in records)
    shared = [(key, n) for key, n in counts.items() if n > 1]
    if shared:
        key, n = shared[0]
        raise DataError(f"{data}: {len(shared)} record id(s) belong to more than one record, e.g. {key!r} ({n} "
                        "records); scores are kept by id, so give each record its own (verbo data check lists them)")


def check_images(data: str | Path, records) -> None:
    """Every record's images are there and are images, from their headers (decoding them all twice would cost
    more than generating on a GPU): a missing or unreadable one fails the evaluation before the model loads, not
    after the replies of every batch before its own. A file cut short further on fails where it is decoded."""
    from ..data.images import image_size

    for record in records:
        for image in record.images:
            try:
                image_size(image)
            except DataError as e:
                raise DataError(f"{data}: record {record.id!r}: {e}; fix or drop it (verbo data clean drops "
                                "unreadable images)") from None


def reference_loss(vlm, records, batch_size: int) -> float:
    """Token-averaged loss of the reference replies under teacher forcing."""
    from ..data.batching import Collator
    from ..model.loss import validation_loss

    encoded = [vlm.encoder.encode(r) for r in records]
    return validation_loss(vlm.model, Collator(vlm.encoder), encoded, batch_size, vlm.device)
