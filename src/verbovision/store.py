"""Reading and writing models, adapters and run files: atomically, with metadata beside each model.

A model directory is a standard transformers checkpoint plus `verbovision.json` (how it was trained: the prompt
template and, for `plain`, the prompt its images came with most often; the base it came from). An adapter directory
is a PEFT adapter plus `verbovision_adapter.json` naming its base model, so merging never guesses the base from
folder names.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import VerboError

MODEL_METADATA = "verbovision.json"
ADAPTER_METADATA = "verbovision_adapter.json"


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file so that readers see either the old or the new content, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, default=None):
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place (a kill mid-save leaves the previous one intact)."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model of an adapter, from the metadata saved beside it (PEFT's own config as a fallback)."""
    adapter_dir = Path(adapter_dir)
    meta = read_json(adapter_dir / ADAPTER_METADATA) or {}
    base = meta.get("base_model") or (read_json(adapter_dir / "adapter_config.json") or {}).get("base_model_name_or_path")
    if not base:
        raise VerboError(f"{adapter_dir}: adapter metadata names no base model ({ADAPTER_METADATA} missing)")
    return base


def model_metadata(path: str | Path) -> dict:
    """How a model was trained (template, base...); empty for models VerboVision did not write."""
    path = Path(path)
    if is_adapter(path):
        return {**model_metadata(adapter_base(path)), **(read_json(path / MODEL_METADATA) or {})}
    return read_json(path / MODEL_METADATA, {})


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_model_location(path: str) -> None:
    """A model directory, an adapter directory, or what can be a hub id: anything else is an error naming it."""
    local = Path(path)
    if local.exists() and not (local / "config.json").exists() and not is_adapter(path):
        raise VerboError(f"{path}: not a model directory (no config.json) nor an adapter (no adapter_config.json)")
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise VerboError(f"{path}: no such model directory (and not a hub id of the form owner/name)")


def load_model(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               quantize: str = "none"):
    """Load a model directory, an adapter directory (base read from its metadata) or a hub id, with its processor.

    `quantize` (see quantize.py): 4bit / 8bit load through bitsandbytes (CUDA); int8-dynamic quantizes on the CPU
    after loading, an adapter being merged first (int8 layers take no adapter).
    """
    from .quantize import quantization_config, quantize_dynamic_int8

    extra = quantization_config(quantize)  # fails before anything loads when the mode cannot work here
    path_str = str(path)
    check_model_location(path_str)
    in_memory = quantize == "int8-dynamic"
    if is_adapter(path_str):
        from peft import PeftModel

        base, processor = load_model(adapter_base(path_str), device, dtype, "none" if in_memory else quantize)
        model = PeftModel.from_pretrained(base, path_str)
        if in_memory:
            model = model.merge_and_unload()
    else:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(path_str, **{"dtype": dtype or torch.float32, **extra})
        processor = load_processor(path_str)
    if not extra:  # bitsandbytes placed the weights itself; its models cannot be moved
        model.to(device or ("cpu" if in_memory else default_device()))
    model.eval()
    if in_memory:
        quantize_dynamic_int8(model)
    return model, processor


def load_processor(path: str | Path):
    """The model's processor (image processor + tokenizer), also for checkpoints that save the two separately.

    VisionEncoderDecoder checkpoints such as nlpconnect/vit-gpt2-image-captioning have no processor class of their
    own: their image processor and tokenizer are paired in a stock `VisionTextDualEncoderProcessor`. A tokenizer
    without a padding token (GPT-2's) pads with its EOS, which the labels mask anyway.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, VisionTextDualEncoderProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(path))
    except (ImportError, AttributeError) as e:
        try:
            processor = _images_only_processor(str(path), e)
        except ImportError as final:
            raise explained_import_error(final) from None
    if not hasattr(processor, "tokenizer"):
        processor = VisionTextDualEncoderProcessor(AutoImageProcessor.from_pretrained(str(path)),
                                                   AutoTokenizer.from_pretrained(str(path)))
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def explained_import_error(error: ImportError) -> Exception:
    """transformers 5.17 builds no image processor without torchvision (later releases fall back to PIL): say what to
    install instead of transformers' multi-line notice."""
    if "Torchvision library" not in str(error):
        return error
    import transformers

    return VerboError(f"transformers {transformers.__version__} loads image processors only where torchvision is "
                      "installed: pip install the torchvision release paired with your torch, or transformers>=5.18")


def _images_only_processor(path: str, error: Exception):
    """The model's processor class without its video processor, which transformers cannot build without torchvision
    (Qwen2-VL's, for one). VerboVision handles images only; `save_processor` writes such a processor back whole."""
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import processor_class_from_name
    from transformers.utils import cached_file

    config_file = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    name = read_json(config_file, {}).get("processor_class") if config_file else None
    cls = processor_class_from_name(name) if name else None
    if cls is None or "video_processor" not in cls.get_attributes():
        raise error

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            return None if argument_name == "video_processor" and argument is None else \
                super().check_argument_for_proper_class(argument_name, argument)

    processor = ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(path),
                           tokenizer=AutoTokenizer.from_pretrained(path), video_processor=None,
                           chat_template=_read_chat_templates(path))
    processor.source_config = Path(config_file)
    return processor


CHAT_TEMPLATE_FILE, CHAT_TEMPLATES_DIR = "chat_template.jinja", "additional_chat_templates"
"""Where transformers keeps a processor's default chat template and its named ones."""


def _read_chat_templates(path: str) -> str | dict | None:
    """The chat templates saved with a model: the default one (a string), or, where a local model also has named
    ones, all of them by name, as transformers reads them."""
    from transformers.utils import cached_file

    default = cached_file(path, CHAT_TEMPLATE_FILE, _raise_exceptions_for_missing_entries=False)
    named = {file.stem: file.read_text(encoding="utf-8")
             for file in sorted((Path(path) / CHAT_TEMPLATES_DIR).glob("*.jinja"))}
    if default:
        named["default"] = Path(default).read_text(encoding="utf-8")
    return named if set(named) - {"default"} else named.get("default")


def _write_chat_templates(templates: str | dict, out: Path) -> None:
    for name, template in (templates if isinstance(templates, dict) else {"default": templates}).items():
        write_atomic(out / CHAT_TEMPLATE_FILE if name == "default" else out / CHAT_TEMPLATES_DIR / f"{name}.jinja",
                     template)


def save_processor(processor, out: str | Path) -> None:
    """Save a processor; one loaded without its video processor gets its original processor_config.json back, so
    that it loads whole wherever torchvision is installed."""
    if getattr(processor, "video_processor", False) is not None:
        processor.save_pretrained(out)
        return
    processor.image_processor.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    if processor.chat_template:
        _write_chat_templates(processor.chat_template, Path(out))
    write_atomic(Path(out) / "processor_config.json", processor.source_config.read_bytes())
