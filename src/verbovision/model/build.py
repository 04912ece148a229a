"""Compose a vision encoder, a connector and a causal LM into a standard transformers VLM checkpoint.

We never ship model code: each connector maps onto an architecture transformers already has, so the result loads
with `AutoModelForImageTextToText` / `AutoProcessor` without VerboVision and without `trust_remote_code`:

| connector       | architecture                          | what the connector computes                          |
|-----------------|---------------------------------------|------------------------------------------------------|
| `linear`        | `LlavaForConditionalGeneration`       | linear_2(linear_1(x)), identity activation; linear_2 |
|                 |                                       | starts as the identity, so it is one linear map      |
| `mlp`           | `LlavaForConditionalGeneration`       | linear_2(act(linear_1(x))), act = gelu or silu       |
| `pixel_shuffle` | `Cohere2VisionForConditionalGeneration` | pixel shuffle by `factor` (s*s patches -> 1 token), |
|                 |                                       | then linear_2(silu(gate) * x) with [x, gate] = linear_1(.) |

The processor is a `LlavaProcessor` in every case; with pixel shuffle its patch size is patch * factor so it inserts
exactly one image token per compressed feature."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    Cohere2VisionConfig,
    GPT2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2Config,
    SiglipVisionConfig,
    SwinConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

from ..config.model import ConnectorSpec, LanguageSpec, ModelSpec, VisionSpec
from ..data.encoding import with_trained_template
from ..data.tokenizer import prepare_pretrained_tokenizer, stop_token_ids, with_image_parts
from ..errors import ConfigError, VerboError
from ..families import family_of, is_vision_encoder_decoder, starts_with_cls, ties_in_vlm
from ..files import folder_written, follow_umask, write_json
from .quantize import is_quantized
from .store import MODEL_METADATA, check_model_source, explained_import_error, save_processor

_SCRATCH_VISION = {"siglip": SiglipVisionConfig, "clip": CLIPVisionConfig, "vit": ViTConfig}
_SCRATCH_LANGUAGE = {"qwen2": Qwen2Config, "llama": LlamaConfig, "gpt2": GPT2Config}


def vision_config(spec: VisionSpec):
    if spec.name:
        config = AutoConfig.from_pretrained(spec.name)
        if is_vision_encoder_decoder(config):  # e.g. the ViT of a trained ViT-GPT2 captioner
            return config.encoder
        vcfg = getattr(config, "vision_config", None) or config
        if type(vcfg) in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ConfigError(f"vision encoder {spec.name}: a {config.model_type} model, not a vision encoder; give "
                              "one such as SigLIP, CLIP or ViT (or a VLM, whose encoder is taken)")
        return vcfg
    if spec.arch == "swin":
        return _swin_config(spec)
    if spec.arch not in _SCRATCH_VISION:
        raise ConfigError(f"vision.arch {spec.arch!r} unknown; choose one of {sorted([*_SCRATCH_VISION, 'swin'])}")
    extra = {"vision_use_head": False} if spec.arch == "siglip" else {}  # the pooling head is never used by a VLM
    return _SCRATCH_VISION[spec.arch](
        **extra,
        hidden_size=spec.hidden_size,
        intermediate_size=4 * spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )


def _swin_config(spec: VisionSpec) -> SwinConfig:
    """A 3-stage Swin: windowed attention and patch merging give a from-scratch encoder locality to learn fast.

    hidden_size is the last stage's width (the first stage has a quarter of it); `layers` blocks are spread over the
    stages; each stage halves the grid, so the encoder emits (image_size / (4 * patch_size))^2 tokens.
    """
    stages = 3
    depths = [max(1, spec.layers // stages + (i < spec.layers % stages)) for i in range(stages)]
    heads = [max(1, spec.heads >> (stages - 1 - i)) for i in range(stages)]
    final_grid = spec.image_size // spec.patch_size >> (stages - 1)
    return SwinConfig(image_size=spec.image_size, patch_size=spec.patch_size, embed_dim=spec.hidden_size >> (stages - 1),
                      depths=depths, num_heads=heads, window_size=min(4, final_grid))


def pretrained_language_config(name: str):
    """The config of a pretrained causal LM; anything else (a vision encoder, a VLM) is a one-line error here, not an
    AttributeError or a tokenizer's traceback later."""
    config = AutoConfig.from_pretrained(name)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(f"language model {name}: a {config.model_type} model, not a causal LM; give one such as "
                          "Qwen2.5, Llama or GPT-2 (to fine-tune a VLM, train a recipe whose model says from:)")
    return config


def language_config(spec: LanguageSpec, vocab_size: int):
    if spec.name:
        config = pretrained_language_config(spec.name)
        # Room for added tokens; never shrink (many LMs pad their embedding past the tokenizer's size).
        config.vocab_size = max(config.vocab_size, vocab_size)
        return config
    if spec.arch not in _SCRATCH_LANGUAGE:
        raise ConfigError(f"language.arch {spec.arch!r} unknown; choose one of {sorted(_SCRATCH_LANGUAGE)}")
    if spec.arch == "gpt2":
        return GPT2Config(
            n_embd=spec.hidden_size,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_positions=spec.max_positions,
            vocab_size=vocab_size,
        )
    return _SCRATCH_LANGUAGE[spec.arch](
        hidden_size=spec.hidden_size,
        intermediate_size=4 * spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads or spec.heads,
        max_position_embeddings=spec.max_positions,
        vocab_size=vocab_size,
        tie_word_embeddings=True,
    )


def _size(value) -> int:
    return value if isinstance(value, int) else value[0]


def patch_grid(vcfg) -> int:
    """Patches per side of the encoder's image grid."""
    return _size(vcfg.image_size) // _size(vcfg.patch_size)


def vlm_config(spec: ModelSpec, vcfg, tcfg, image_token_id: int):
    """Map the connector onto a transformers VLM architecture, or say why it cannot be mapped."""
    connector = spec.connector
    has_cls = starts_with_cls(vcfg)
    tie = bool(getattr(tcfg, "tie_word_embeddings", True)) and ties_in_vlm(tcfg)
    tcfg.tie_word_embeddings = tie  # the VLM configs inherit tying from the text config
    if connector.type in ("linear", "mlp"):
        check_feature_layer(spec.vision.feature_layer, vcfg)
        act = "linear" if connector.type == "linear" else connector.act
        if act not in ("linear", "gelu", "silu"):
            raise ConfigError(f"connector.act {connector.act!r} unsupported; use gelu or silu")
        return LlavaConfig(
            vision_config=vcfg,
            text_config=tcfg,
            image_token_id=image_token_id,
            projector_hidden_act=act,
            vision_feature_layer=spec.vision.feature_layer,
            vision_feature_select_strategy="default" if has_cls else "full",
            tie_word_embeddings=tie,
        )
    if connector.type == "pixel_shuffle":
        if has_cls:
            raise ConfigError(
                f"connector pixel_shuffle cannot be mapped for a {vcfg.model_type} encoder: transformers' "
                "pixel-shuffle VLM (Cohere2Vision) reshapes every output token into a square grid, and this "
                "encoder adds a CLS token. Use a SigLIP encoder, or connector type mlp."
            )
        if spec.vision.feature_layer != -1:
            raise ConfigError("connector pixel_shuffle reads the encoder's last layer; set vision.feature_layer: -1")
        if connector.act != "silu":
            raise ConfigError("connector pixel_shuffle maps to Cohere2Vision's SiLU-gated MLP; set connector.act: silu")
        if connector.factor < 1:
            raise ConfigError(f"connector.factor {connector.factor}: give an integer >= 1 (factor x factor patches "
                              "become one image token)")
        if patch_grid(vcfg) % connector.factor:
            raise ConfigError(
                f"pixel_shuffle factor {connector.factor} does not divide the {patch_grid(vcfg)}x{patch_grid(vcfg)} "
                "patch grid"
            )
        return Cohere2VisionConfig(
            vision_config=vcfg,
            text_config=tcfg,
            image_token_id=image_token_id,
            downsample_factor=connector.factor,
            alignment_intermediate_size=2 * (connector.hidden_size or 2 * tcfg.hidden_size),
            tie_word_embeddings=tie,
        )
    raise ConfigError(f"connector.type {connector.type!r} unknown; choose linear, mlp or pixel_shuffle")


def check_feature_layer(layer: int, vcfg) -> None:
    """A hidden state the encoder has: -1 (the last) to -(L+1) (the embeddings), or 1..L. Layer 0 is refused though
    it names the embeddings: transformers' Llava asks for hidden states with `output_hidden_states=layer`, and 0 asks
    for none."""
    layers = getattr(vcfg, "num_hidden_layers", None)
    if layers is not None and not (-layers - 1 <= layer <= layers and layer != 0):
        raise ConfigError(f"vision.feature_layer {layer}: the {vcfg.model_type} encoder has {layers} layers; give -1 "
                          f"(its last) down to -{layers + 1} (its embeddings), or 1..{layers}")


def image_processor_for(spec: VisionSpec, vcfg):
    if spec.name:
        try:
            return AutoImageProcessor.from_pretrained(spec.name)
        except ImportError as e:
            raise explained_import_error(e) from None
    size = _size(vcfg.image_size)
    if spec.arch == "clip":
        return image_processor("CLIP", size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return image_processor("Siglip" if spec.arch == "siglip" else "ViT", size={"height": size, "width": size})


def image_processor(name: str, **settings):
    """transformers' `{name}ImageProcessor`, or its PIL twin where the default one needs torchvision and torchvision
    is missing (transformers releases whose default backend cannot run on torch alone)."""
    import transformers

    try:
        return getattr(transformers, f"{name}ImageProcessor")(**settings)
    except ImportError:
        return getattr(transformers, f"{name}ImageProcessorPil")(**settings)


def image_tokens_of(model: PreTrainedModel, image_size: int) -> int:
    """How many tokens the model's vision path (encoder + connector) emits for one image, by running it once."""
    pixels = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output
    # A list of [N, D] (Llava) or a [1, N, D] tensor (Cohere2Vision; [1, h, w, D] in older transformers)
    return features[0].shape[:-1].numel()


def make_processor(spec: ModelSpec, model: PreTrainedModel, image_processor, tokenizer) -> LlavaProcessor:
    """A LlavaProcessor whose patch size makes it insert exactly as many image tokens as the model emits."""
    crop = getattr(image_processor, "crop_size", None) or image_processor.size
    size = crop.get("height") or crop.get("shortest_edge")
    tokens = image_tokens_of(model, size)
    side = math.isqrt(tokens)
    if side * side != tokens or size % side:
        raise ConfigError(f"the vision path emits {tokens} tokens per {size}px image, not a square grid")
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size // side,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        image_token=spec.image_token,
        chat_template=with_image_parts(tokenizer.chat_template, spec.image_token),
    )


def _load_pretrained_vision(spec: VisionSpec, vcfg) -> PreTrainedModel:
    if is_vision_encoder_decoder(AutoConfig.from_pretrained(spec.name)):
        return VisionEncoderDecoderModel.from_pretrained(spec.name).encoder
    # Resolving the class from the vision sub-config loads only the encoder out of a full CLIP/SigLIP checkpoint.
    return MODEL_MAPPING[type(vcfg)].from_pretrained(spec.name)


def build_vlm(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build the VLM and its processor. `tokenizer` is required when the LM is built from scratch."""
    for name, what in ((spec.vision.name, "vision encoder"), (spec.language.name, "language model")):
        if name:
            check_model_source(name, what)
    if not spec.image_token.strip():
        raise ConfigError("image_token is empty; give the text token that stands for an image, e.g. <image>")
    if spec.image_token.isalnum():  # an added token matches anywhere in a text, inside words too
        raise ConfigError(f"image_token {spec.image_token!r} would stand for an image wherever a text has it (in "
                          "'Describe the image' for 'the'); give a marker no text holds, e.g. <image>")
    if spec.language.name:
        pretrained_language_config(spec.language.name)  # before its tokenizer, which a vision encoder lacks
        tokenizer = prepare_pretrained_tokenizer(spec.language.name, spec.image_token)
    elif tokenizer is None:
        raise ConfigError("a from-scratch language model needs a tokenizer trained on the data")
    vcfg = vision_config(spec.vision)
    tcfg = language_config(spec.language, vocab_size=len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids(spec.image_token)
    config = vlm_config(spec, vcfg, tcfg, image_token_id)
    stops = stop_token_ids(tokenizer)
    config.text_config.eos_token_id = stops[0]
    config.text_config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForImageTextToText.from_config(config)
    _init_connector(model, spec.connector)
    if spec.vision.name:
        model.model.vision_tower.load_state_dict(_load_pretrained_vision(spec.vision, vcfg).state_dict())
    if spec.language.name:
        _copy_language_model(model, spec.language.name)
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = make_processor(spec, model, image_processor_for(spec.vision, vcfg), tokenizer)
    return model, processor


def _init_connector(model: PreTrainedModel, spec: ConnectorSpec) -> None:
    if spec.type == "linear":
        # Start linear_2 as the identity so the connector begins as one plain linear map.
        with torch.no_grad():
            projector = model.model.multi_modal_projector
            projector.linear_2.weight.copy_(torch.eye(projector.linear_2.weight.shape[0]))
            if projector.linear_2.bias is not None:
                projector.linear_2.bias.zero_()


def _copy_language_model(model: PreTrainedModel, name: str) -> None:
    lm = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    lm.resize_token_embeddings(model.config.text_config.vocab_size)
    model.model.language_model.load_state_dict(lm.base_model.state_dict())
    with torch.no_grad():
        model.lm_head.weight.copy_(lm.get_output_embeddings().weight)


def save_model(model: PreTrainedModel, processor: ProcessorMixin, out: str | Path, metadata: dict | None = None) -> Path:
    """Save a standard checkpoint (safetensors) + processor, and our build metadata beside them, whole or not at all
    (`folder_written`). With a `template` in the metadata, the saved chat template renders the layout the model was
    trained on (`with_trained_template`)."""
    out = Path(out)
    if is_quantized(model):
        raise VerboError(f"{out}: a model quantized for inference cannot be saved as a checkpoint; save the float one")
    if metadata and "template" in metadata:
        processor = with_trained_template(processor, family_of(model.config), metadata)
    with folder_written(out, last="config.json") as partial:
        model.save_pretrained(partial, safe_serialization=True)
        follow_umask(partial)
        save_processor(processor, partial)
        if metadata is not None:
            write_json(partial / MODEL_METADATA, metadata)
    return out


CONNECTOR_FIELDS = {"linear": ("type",), "mlp": ("type", "act"),
                     "pixel_shuffle": ("type", "act", "factor", "hidden_size")}
"""The ConnectorSpec fields each connector type uses."""


def spec_record(spec: ModelSpec) -> dict:
    """What a model's verbovision.json records of its composition, only what is true of the model: a pretrained
    component by its name (the encoder with the layer that feeds the connector), a from-scratch one by its sizes, the
    connector by the fields its type uses; never the from-scratch defaults of a pretrained component."""
    vision, language = asdict(spec.vision), asdict(spec.language)
    if spec.vision.name:
        vision = {"name": spec.vision.name, "feature_layer": spec.vision.feature_layer}
    if spec.language.name:
        language = {"name": spec.language.name}
    connector = {key: getattr(spec.connector, key) for key in CONNECTOR_FIELDS.get(spec.connector.type, ("type",))}
    return {"vision": vision, "language": language, "connector": connector, "image_token": spec.image_token}


def describe(model: PreTrainedModel) -> str:
    total = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}: {total / 1e6:.2f}M parameters"
