"""Reading and writing models and adapters, with metadata beside each model; a model's processor and what it
encodes.

A model directory is a standard transformers checkpoint plus `verbovision.json` (how it was trained: the prompt
template and, for `plain`, the prompt its images came with most often; the base it came from). An adapter directory
is a PEFT adapter plus `verbovision_adapter.json` naming its base model, so merging never guesses the base from
folder names."""

from __future__ import annotations

import inspect
import json
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import VerboError
from ..files import PARTIAL, blocking_file, read_json, write_atomic

MODEL_METADATA = "verbovision.json"
ADAPTER_METADATA = "verbovision_adapter.json"
BASE_IN_RUN = "base_in_run"
"""ADAPTER_METADATA's key for a base inside the adapter's run (RUN/stages/<i>-<name>/adapter): its path in the run."""


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def metadata_json(path: Path, default=None):
    """`read_json` of a model's metadata file, one that is not JSON (hand-edited, cut short) a one-line error."""
    try:
        return read_json(path, default)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VerboError(f"{path}: not valid JSON ({e}); fix the file, or write it again") from None


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model of an adapter, from the metadata saved beside it (PEFT's own config as a fallback)."""
    adapter_dir = Path(adapter_dir)
    meta = metadata_json(adapter_dir / ADAPTER_METADATA) or {}
    peft_config = metadata_json(adapter_dir / "adapter_config.json") or {}
    base = meta.get("base_model") or peft_config.get("base_model_name_or_path")
    if not base:
        raise VerboError(f"{adapter_dir}: adapter metadata names no base model ({ADAPTER_METADATA} missing)")
    run = adapter_dir.resolve().parents[2:3]  # RUN of RUN/stages/<i>-<name>/adapter (or of a link to it: final)
    if meta.get(BASE_IN_RUN) and not Path(base).exists() and run:  # the run has moved since, its base with it
        moved = run[0] / meta[BASE_IN_RUN]
        if moved.exists():
            return str(moved)
    return base


def run_final(path: str | Path) -> str:
    """The model a path names: a finished run folder stands for its final model (PRODUCT.md: MODEL may be a run),
    anything else for itself."""
    final = Path(path) / "final"
    if (Path(path) / "run.json").exists() and ((final / "config.json").exists() or is_adapter(final)):
        return str(final)
    return str(path)


def model_metadata(path: str | Path) -> dict:
    """How a model was trained (template, base...); empty for models VerboVision did not write."""
    path = Path(run_final(path))
    if is_adapter(path):
        return {**model_metadata(adapter_base(path)), **(metadata_json(path / MODEL_METADATA) or {})}
    return metadata_json(path / MODEL_METADATA, {})


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def usable_device(name: torch.device | str) -> torch.device:
    """The device `name` names, refused in one line where it is no device name or not on this machine."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VerboError(f"device {name!r} unknown; use cpu, cuda, cuda:N or mps") from None
    present = {"cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}.get(device.type)
    if present is not None and (device.index or 0) >= present:
        found = f"{present} {device.type} device(s)" if present else f"no {device.type} device"
        raise VerboError(f"device {name!r}: this machine has {found}; use another --device (cpu always works)")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str | None = None) -> torch.dtype:
    """The dtype weights load in on `device` (default: `default_device()`), for a `model.dtype` / `--dtype` name (a
    torch dtype passes as it is): auto (None) is bfloat16 on a CUDA GPU that computes in it natively, float32
    elsewhere (the CPU, MPS, older GPUs), where bfloat16 is slow or emulated."""
    from ..config.schema import DTYPES

    if isinstance(name, torch.dtype):
        return name
    name = name or "auto"
    if name not in DTYPES:
        raise VerboError(f"dtype {name!r} unknown; use {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    device = torch.device(device) if device is not None else default_device()
    on_bf16_gpu = device.type == "cuda" and torch.cuda.is_available() \
        and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if on_bf16_gpu else torch.float32


def weights_dtype(model) -> torch.dtype:
    """The dtype a model's weights were loaded in (its config's; what trains may since be float32), which a stage
    saves it in: float32 for a model whose config says none."""
    dtype = getattr(model.config, "dtype", None)
    if isinstance(dtype, str):  # save_pretrained writes the name back into the config
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def inputs_for(model, batch: dict, device) -> dict:
    """`batch`'s tensors on `device`, the floating ones (pixel values and the like) in the weights' dtype, as
    `BatchFeature.to(device, dtype)` gives them: not every vision tower casts its input itself (SAM's in DeepSeek-VL
    hybrid, Chameleon's, Aria's), and a bfloat16 one fed float32 pixels fails. A training forward needs none of this:
    it runs under autocast."""
    dtype = weights_dtype(model)
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}


def check_model_location(path: str) -> None:
    """A model directory, an adapter directory, or a model the hub can give: anything else is an error naming it."""
    local = Path(path)
    if local.exists() and not (local / "config.json").exists() and not is_adapter(path):
        raise VerboError(not_a_model(local))
    check_model_source(path)


def load_model(path: str | Path, device: torch.device | str | None = None, dtype: str | torch.dtype | None = None,
               quantize: str = "none", attention: str = "auto"):
    """Load a model directory, an adapter directory (base read from its metadata) or a hub id, with its processor.

    `dtype`: a `--dtype` name or a torch dtype, None meaning auto (`resolve_dtype` on the device it loads on). An
    adapter's weights load in float32 whatever the base's (PEFT's autocast_adapter_dtype).

    `quantize` (see quantize.py): 4bit / 8bit load through bitsandbytes (CUDA or CPU); int8-dynamic quantizes on the CPU
    after loading, an adapter being merged first (int8 layers take no adapter). `attention`: the attention
    implementation, or `auto` to choose one for the model (attention.py).
    """
    from ..families import check_required_inputs, family_of
    from .attention import attention_for
    from .quantize import quantization_config, quantize_dynamic_int8

    in_memory = quantize == "int8-dynamic"
    device = usable_device(device or ("cpu" if in_memory else default_device()))
    extra = quantization_config(quantize, device)  # fails before anything loads when the mode cannot work here
    path_str = run_final(path)
    check_model_location(path_str)
    dtype = resolve_dtype(dtype, device)
    if is_adapter(path_str):
        from peft import PeftModel

        base_quantize = "none" if in_memory else quantize
        base_path = adapter_base(path_str)
        check_model_source(base_path, f"{path_str}: its base model (from {ADAPTER_METADATA})")
        base, processor = load_model(base_path, device, dtype, base_quantize, attention)
        if isinstance(base, PeftModel):  # trained from an adapter (`model.from:`): onto that adapter merged, as then
            base = base.merge_and_unload()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with peft_wrapping(), readable_weights(path_str):  # inside: its filter goes before "always"
                model = PeftModel.from_pretrained(base, path_str)
        refuse_missing_adapter_weights(path_str, caught)
        if in_memory:
            model = model.merge_and_unload()
    else:
        from transformers import AutoConfig, AutoModelForImageTextToText

        try:
            config = AutoConfig.from_pretrained(path_str)
            family_of(config)  # a refused model type is refused before its weights load
            attention = attention_for(config, dtype, device, attention)
            with readable_weights(path_str):
                model = AutoModelForImageTextToText.from_pretrained(
                    path_str, **{"dtype": dtype, "attn_implementation": attention, **extra})
            processor = load_processor(path_str)
        except ValueError as e:  # transformers lists every image-text class it knows; say what the model is
            if "Unrecognized configuration class" not in str(e):
                raise
            raise VerboError(not_image_text(path_str)) from None
        except OSError as e:  # a file missing from a model directory or hub repository: its first line names it
            raise VerboError(f"{path_str}: cannot load the model: {str(e).splitlines()[0]}") from None
        except ImportError as e:  # a module of the model needs a package (FastVLM's timm tower)
            raise explained_import_error(e, path_str, "model") from None
        check_required_inputs(model, processor)
    if not extra:  # bitsandbytes placed the weights itself; its models cannot be moved
        model.to(device)
    model.eval()
    if in_memory:
        quantize_dynamic_int8(model)
    return model, processor


@contextmanager
def readable_weights(path: str) -> Iterator[None]:
    """A weights file of `path` that safetensors cannot read (truncated by an interrupted copy, overwritten) is a
    one-line error naming the model."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        raise VerboError(f"{path}: a weights file is corrupt or truncated ({e}); copy or save the model again") \
            from None


def refuse_missing_adapter_weights(path: str, caught: list[warnings.WarningMessage]) -> None:
    """PEFT only warns when weights of an adapter it loads find no place in the model, which then runs without them:
    refuse that (PEFT 0.21 renames DeepSeek-OCR-2's adapter keys a second time with transformers' checkpoint
    conversion); pass every other warning on."""
    for caught_warning in caught:
        message = str(caught_warning.message)
        if "missing adapter keys" in message:
            import peft

            first = re.search(r"\['([^']+)'", message)
            raise VerboError(f"{path}: PEFT {peft.__version__} loads this adapter without some of its weights (e.g. "
                             f"{first.group(1) if first else 'its LoRA layers'}); use a merged model instead (a stage "
                             "with `merge: true` saves one as the run's final model)")
        warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename,
                               caught_warning.lineno)


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around wrapping a model in PEFT, which asks it `is_gradient_checkpointing`: transformers releases that renamed
    it `is_activation_checkpointing` answer with a FutureWarning each time, about PEFT's code, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def check_model_out(out: str | Path, reads: dict[str, str | Path]) -> None:
    """Refuse, before any work, an --out a model cannot be saved to without harm: a file in the way, a folder this
    command reads (`reads`: what -> path; saving the merge of an adapter over its own base would make every later
    load of the adapter apply it twice), or a folder holding anything but a model (a run, an adapter, data: the
    checkpoint's files would mix with its own). A model folder is overwritten, as transformers saves over one."""
    out = Path(out)
    blocking = blocking_file(out)
    if blocking:
        raise VerboError(f"--out {out}: {blocking} is a file, not a folder; choose another --out")
    for what, path in reads.items():
        if Path(path).exists() and out.resolve() == Path(path).resolve():
            raise VerboError(f"--out {out}: the {what} this command reads; choose another --out")
    held = [path for path in out.iterdir() if path.name != PARTIAL] if out.is_dir() else []  # PARTIAL: a killed save's
    if held and (is_adapter(out) or not (out / "config.json").exists()):
        raise VerboError(f"--out {out}: a folder that holds something other than a model; choose a new or empty "
                         "folder")


def not_a_model(folder: Path) -> str:
    """Why a folder without config.json is no model: a run folder without a final model (`run_final`) says how to
    finish it."""
    if not (folder / "run.json").exists():
        return f"{folder}: not a model directory (no config.json) nor an adapter (no adapter_config.json)"
    return (f"{folder}: a run folder whose training has not finished (no final model): continue it with "
            f"`verbo train ... --out {folder} --resume`, or give a stage's model (stages/*/model)")


def not_image_text(path: str) -> str:
    """Why a model transformers cannot load as an image-text model is not one, and what to do with it."""
    from transformers import AutoConfig

    from ..families import component_kind

    kind = AutoConfig.from_pretrained(path).model_type
    component = component_kind(kind)
    if component == "language":
        return (f"{path}: a language model ({kind}), not an image-text model; compose it with a vision encoder "
                f"first: verbo build --vision ENCODER --language {path} --out DIR")
    if component == "vision":
        return (f"{path}: a vision encoder ({kind}), not an image-text model; compose it with a language model "
                f"first: verbo build --vision {path} --language LM --out DIR")
    return f"{path}: a {kind} model, not an image-text model (AutoModelForImageTextToText does not load it)"


_HUB_KNOWS: set[str] = set()
"""The hub ids the hub has answered for in this process: it is asked about each once (an adapter's base is checked
as the adapter's, then as the model loaded under it)."""


def check_model_source(name: str, what: str = "model") -> None:
    """Fail at once, in one line, where `name` (a `what`: model, vision encoder...) is neither a local path nor a
    model the hub can give: a mistyped path, an id missing from the cache while HF_HUB_OFFLINE is set, an id the hub
    does not know, or any id while the hub cannot be reached (transformers would retry every file for minutes). A
    cached model loads from the cache when the hub cannot be reached: the process goes offline."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name).expanduser().exists():
        return
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise VerboError(f"{what} {name}: no such directory (and not a hub id of the form owner/name)") from None
    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise VerboError(f"{what} {name}: no such directory, and not in the hub cache while HF_HUB_OFFLINE is set "
                             "(unset it to download the model, or give a model directory)")
        return
    if name in _HUB_KNOWS:
        return
    unreachable = _hub_unreachable(name, what)
    if not unreachable:
        _HUB_KNOWS.add(name)
    if unreachable and cached:
        print(f"verbo: the model hub cannot be reached ({unreachable}); loading {name} from the cache",
              file=sys.stderr)
        constants.HF_HUB_OFFLINE = True  # every later file of every model comes from the cache, without retries
    elif unreachable:
        raise VerboError(f"{what} {name}: no such directory, and the model hub cannot be reached ({unreachable}): "
                         "check the connection (HF_ENDPOINT, proxy), or give a model directory")


def _hub_unreachable(name: str, what: str) -> str | None:
    """Why the hub cannot be asked about model `name` (None: it answered); raises where it answered that it has no
    such model."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise VerboError(f"{what} {name}: no such directory, nor a model on the hub (a private or gated model needs "
                         "`hf auth login`)") from None
    except HfHubHTTPError as e:  # the hub answered, with something else than the model (rate limit, outage...)
        raise VerboError(f"{what} {name}: the model hub answered {e.response.status_code}; try again later, or give "
                         "a model directory") from None
    except Exception as e:  # noqa: BLE001 - any failure to get an answer (DNS, refused, timeout, proxy) means unreachable
        return f"{constants.ENDPOINT}: {e}"
    return None


HUB_TIMEOUT_S = 10
"""How long the one question to the hub about a model id may take before the hub counts as unreachable."""


def load_processor(path: str | Path):
    """The model's processor (image processor + tokenizer), also for checkpoints that save the two separately.

    VisionEncoderDecoder checkpoints such as nlpconnect/vit-gpt2-image-captioning have no processor class of their
    own: their image processor and tokenizer are paired in a stock `VisionTextDualEncoderProcessor`. A tokenizer
    without a padding token (GPT-2's) pads with its EOS, which the labels mask anyway.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, VisionTextDualEncoderProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(path))
    except ValueError as e:  # transformers found neither tokenizer.json nor a slow tokenizer to convert
        if "backend tokenizer" not in str(e):
            raise
        raise VerboError(f"{path}: no tokenizer it can read (tokenizer.json missing?); copy the model's tokenizer "
                         "files into it") from None
    except (ImportError, AttributeError) as e:
        try:
            processor = _images_only_processor(str(path), e)
        except ImportError as final:
            raise explained_import_error(final, str(path)) from None
    if not hasattr(processor, "tokenizer"):
        processor = VisionTextDualEncoderProcessor(AutoImageProcessor.from_pretrained(str(path)),
                                                   AutoTokenizer.from_pretrained(str(path)))
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def explained_import_error(error: ImportError, path: str = "the model", part: str = "processor") -> Exception:
    """What to install, in one line, where a processor (or a model: `part`) cannot be built without a package:
    torchvision for any image processor in transformers 5.17 (later releases fall back to PIL), or a package its class
    needs (SmolVLM's num2words, FastVLM's timm vision tower), which transformers names with `pip install <package>`."""
    if "Torchvision library" not in str(error):
        # `pip install timm`, or with flags and a version: `pip install -U bitsandbytes>=0.46.1`
        package = re.search(r"pip install (?:-\S+ +)*([A-Za-z0-9_.\-]+)((?:[<>=!~]=?[0-9][\w.]*)?)", str(error))
        if package is None:
            return error
        name, version = package.group(1).rstrip("."), package.group(2).rstrip(".")
        if version:
            return VerboError(f"{path}: its {part} needs {name}{version}, which is not installed (or older): "
                              f"pip install -U '{name}{version}'")
        return VerboError(f"{path}: its {part} needs the {name} package, which is not installed: pip install {name}")
    import transformers

    if tuple(int(part) for part in transformers.__version__.split(".")[:2]) < (5, 18):
        return VerboError(f"transformers {transformers.__version__} loads image processors only where torchvision is "
                          "installed: pip install the torchvision release paired with your torch, or "
                          "transformers>=5.18")
    # Later releases still need it for some processor classes (Mistral3's PixtralProcessor, at import)
    return VerboError(f"{path}: its processor needs torchvision in transformers {transformers.__version__}: pip install "
                      "the torchvision release paired with your torch")


def _images_only_processor(path: str, error: Exception):
    """The model's processor class without its video processor, which transformers cannot build without torchvision
    (Qwen2-VL's, SmolVLM's, LLaVA-OneVision's). Every other setting saved in processor_config.json is kept (the image
    token counts and feature strategies the processor expands images with); VerboVision handles images only, and
    `save_processor` writes such a processor back whole."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer, ProcessorMixin
    from transformers.models.auto.processing_auto import processor_class_from_name
    from transformers.utils import cached_file

    config_file = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    saved = read_json(config_file, {}) if config_file else {}
    cls = processor_class_from_name(saved["processor_class"]) if saved.get("processor_class") else None
    if cls is None or "video_processor" not in cls.get_attributes():
        raise error

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            return None if argument_name == "video_processor" else \
                super().check_argument_for_proper_class(argument_name, argument)

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            # The family's own override may read the video processor's defaults (SmolVLM's num_frames); images
            # need none of them.
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    # Some classes read their video processor's settings as they are built (MiniCPM-V's slice_mode): they read
    # the saved ones off a stand-in, which the processor then drops.
    stand_in = SimpleNamespace(**saved.get("video_processor", {}))
    init = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in saved.items() if k in init and k not in cls.get_attributes() and k != "chat_template"}
    # Gemma 4's processor also holds an audio feature extractor, which loads without torchvision
    others = {"feature_extractor": AutoFeatureExtractor.from_pretrained(path)} \
        if "feature_extractor" in cls.get_attributes() else {}
    processor = ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(path),
                           tokenizer=AutoTokenizer.from_pretrained(path), video_processor=stand_in,
                           chat_template=_read_chat_templates(path), **others, **settings)
    processor.video_processor = None
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
    that it loads whole wherever torchvision is installed. (A processor whose class sets `video_processor = None`
    itself, as Qianfan-OCR's does, is whole and saves as usual.)"""
    if getattr(processor, "source_config", None) is None:
        processor.save_pretrained(out)
        return
    processor.image_processor.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    if processor.chat_template:
        _write_chat_templates(processor.chat_template, Path(out))
    write_atomic(Path(out) / "processor_config.json", processor.source_config.read_bytes())


def records_encoder(model: str, template: str | None, max_length: int):
    """How `model` (directory or hub id) would encode records, read from its processor and config alone (no weights):
    `template` by default the one it was trained with; records over `max_length` tokens fail to encode."""
    from transformers import AutoConfig

    from ..data.encoding import Encoder
    from ..families import family_of

    check_model_source(model)
    try:
        processor = load_processor(model)
        family = family_of(AutoConfig.from_pretrained(model))
    except (OSError, ValueError) as e:
        raise VerboError(f"{model}: cannot load the model's processor ({e})") from None
    template = template or model_metadata(model).get("template", "chat")
    return Encoder(processor, template, max_length, truncation="drop", family=family)
