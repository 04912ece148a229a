"""What differs between VLM families, in one place: where a model takes its images, what every text starts with, how
a batch becomes the model's forward arguments, and which modules are its vision / connector / language components.

Three ways of taking images cover the families VerboVision fine-tunes:

| images         | families                                              | the text holds                          |
|----------------|-------------------------------------------------------|-----------------------------------------|
| `image-tokens` | Llava, Idefics3/SmolVLM, Qwen2-VL, Cohere2Vision, ... | placeholder tokens the features replace |
| `prefix`       | GIT                                                   | nothing: features are prepended         |
| `encoder`      | VisionEncoderDecoder (ViT + GPT-2...)                 | nothing: the decoder cross-attends      |

Components are found by module name, so any family that keeps transformers' usual names works without a table entry.
"""

from __future__ import annotations

import inspect
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from .errors import ConfigError

IMAGES_IN_TEXT, PREFIX, ENCODER = "image-tokens", "prefix", "encoder"

COMPONENT_MODULES = {
    "vision": ("model.vision_tower", "model.vision_model", "model.visual", "git.image_encoder", "encoder",
               # DeepSeek-VL-Hybrid's high-resolution branch: SAM tower, its global-attention neck, convolutions down
               # to the low-resolution grid. Its gate, the bare parameter model.high_res_vision_alpha, stays out of
               # every component: PEFT saves whole modules only, so a LoRA stage could not keep it.
               "model.high_res_vision_model", "model.high_res_vision_neck", "model.high_res_vision_proj",
               "vision_model", "model.vqmodel",
               # Video-LLaVA's two towers of one config: images go through the image tower only
               "model.image_tower", "model.video_tower", "model.vision_encoder"),
    "connector": ("model.multi_modal_projector", "model.connector", "model.aligner", "model.projector", "model.merger",
                  "model.visual.merger", "model.visual.deepstack_merger_list", "model.vision_tower.patch_merger",
                  "model.vision_model.merger", "model.vision_tower.merger", "model.resampler_model",
                  "git.visual_projection", "enc_to_dec_proj", "model.embed_vision",
                  "query_tokens", "qformer", "language_projection", "model.image_newline",
                  "model.layerwise_projectors", "model.spatial_projectors", "model.vision_model.connector",
                  "model.visual_embeddings_table", "model.vision_projection", "model.view_separator"),
    "language": ("model.language_model", "model.text_model", "lm_head", "git.embeddings", "git.encoder", "output",
                 "decoder", "language_model", "model.embed_tokens", "model.layers", "model.norm"),
}
"""Where each component lives, across families (transformers v5 module or parameter names; the longest matching
prefix wins, so Qwen2-VL's `model.visual.merger` is the connector although it sits inside the vision tower, and so are
Qwen3-VL's DeepStack mergers, which project intermediate vision layers into the first LM layers). BLIP-2's connector
is its Q-Former, the learned queries it reads (`query_tokens`, a bare parameter) and `language_projection`;
Cosmos3-Edge's is its 2x2 patch merger `model.projector`, Gemma 4's `model.embed_vision`; LLaVA-NeXT's and
LLaVA-OneVision's learned row separator (`model.image_newline`, bare too) trains with the projector, as in their own
training. Chameleon keeps its LM's layers in `model` itself, beside the VQ-VAE that turns images into tokens of the
LM's vocabulary (`model.vqmodel`, vision; no connector). MiniCPM-V's projector is `model.merger`; its window-attention
merger between two vision layers (`model.vision_tower.vit_merger`) stays with the vision tower. Hy4-VL's
`model.vision_tower.patch_merger`, like Qwen2-VL's merger, projects the tower's output into the LM (with its learned
image begin / end / newline embeddings). Granite 4 Vision's window Q-Former projectors, one
per vision depth it injects into an LM layer and one per spatial group (DeepStack), are its connector; Granite-Docling's
connector sits inside its vision model (`model.vision_model.connector`). DeepSeek-OCR-2's separator after an image's
views (`model.view_separator`, bare) trains with its projector. Ovis's connector is its visual embedding table, which
embeds the tower's probabilities over visual words (the tower's own head computes them). LightOnOCR names Mistral3's
tower and projector `model.vision_encoder` and `model.vision_projection`. HunYuan-VL's `model.vision_tower.patch_merger`
projects as Hy4-VL's does, dots3-note's `model.vision_tower.merger` too. HyperCLOVAX-SEED Vision V2 keeps Qwen2.5-VL's
tower, merger included, as `model.vision_model` and adds a linear `model.projector`: both are connector.
ERNIE-4.5-VL's `model.resampler_model` merges patches and frames."""

CROSS_ATTENTION_MODULES = ("crossattention", "ln_cross_attn", "encoder_attn", "encoder_attn_layer_norm", "cross_attn")
"""Module names of decoder cross-attention (GPT-2, BART/mBART/Marian, others) for `language: cross_attention`."""


def is_cross_attention(name: str) -> bool:
    """Whether a module (by its full name) is decoder cross-attention or its norm."""
    return name.split(".")[-1] in CROSS_ATTENTION_MODULES


def is_output_head(name: str) -> bool:
    """Whether a module (by its full name) is the output head over the vocabulary: `lm_head`, or GIT's `output`."""
    return name.split(".")[-1] == "lm_head" or name == "output"


def position_limit(text_config) -> int | None:
    """How many positions a language model takes at all: as many as its learned position embeddings (GPT-2's
    n_positions, GIT's max_position_embeddings), one more being an IndexError; None for rotary positions, which run
    past the length a model was trained to (worse, but they run, as transformers' generate lets them)."""
    if any(getattr(text_config, key, None) is not None for key in ("rope_parameters", "rope_theta", "rope_scaling")):
        return None
    return getattr(text_config, "n_positions", None) or getattr(text_config, "max_position_embeddings", None)


_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Support:
    """What VerboVision knows about one model type beyond how it takes images (the `SUPPORT` table)."""

    processor_only: tuple[str, ...] = ()
    """Image-processor outputs that only the processor reads, to expand its image token (Gemma3's crop counts,
    InternVL's tile counts): never passed to the model, whose forward does not take them."""
    caches_features: bool = False
    """The image features are the connector's output on one vision-tower hidden state, placed at the image tokens in
    order: features computed once (the feature cache) can stand in for the pixels."""
    packs: bool = True
    """Packing several examples into one row works: positions restart per example and reach the model."""
    packing_refusal: str = ""
    """Why packing does not work, where it does not."""
    rope_index: bool = False
    """Its M-RoPE positions (time, height, width rows) are the model's own `get_rope_index` of a whole row, and its
    forward also takes them as position_ids [4, B, T] whose first row holds the plain text positions, from which
    transformers finds packed samples' bounds (5.17 on): packed, each sample's rows are computed alone."""
    prefix_lm: bool = False
    """The model takes `token_type_ids` for a prefix-LM mask: 0 on the prompt (attended both ways), 1 from the first
    reply token on (causal). PaliGemma's; without them its Gemma config's bidirectional attention also reaches the
    replies of any batch without padding."""
    layout: str | None = None
    """The family's own prompt layout (an `Encoder` template), used in place of `chat` by a model that has no chat
    template: PaliGemma's `prefix`, as its processor lays out a text and a suffix."""
    prompt: str | None = None
    """What `caption` asks by default, where the family has its own convention (PaliGemma's task prefixes)."""
    flat_images: bool = False
    """Its processor takes one image per text as a flat list: a nested list means something else (GOT-OCR2's pages of
    one document), where other processors take a list of images per text."""
    refused: str | None = None
    """Why VerboVision cannot work with the model type (refused when a model of the type is loaded)."""


_OWN_ROPE = "it computes its rotary positions (M-RoPE) from the whole row, so restarted positions would not reach it"
_LINEAR_ATTENTION = ("its language model's linear-attention layers carry their state along the whole row, across the "
                     "packed examples' boundaries")

ROPE_INDEX_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
"""The Qwen-VL families that pack with each sample's M-RoPE positions computed alone (`Support.rope_index`)."""

OWN_ROPE_TYPES = ("qwen3_5", "qwen3_5_moe", "qwen4_exp", "glm4v", "glm4v_moe", "glm46v", "glm_ocr", "glmga",
                  "cosmos3_omni", "cosmos3_edge", "cohere_compass", "hy_v4_vl", "paddleocr_vl", "hunyuan_vl",
                  "ernie4_5_vl_moe")
"""The other Qwen2-VL-like families (Qwen3.5, GLM-4.xV, Cosmos3, CohereCompass, Hy4-VL, PaddleOCR-VL, HunYuan-VL,
ERNIE-4.5-VL): their M-RoPE positions come from the whole row, and no test here has tried theirs per sample."""

_ENCODER_READS_PROMPT = ("its language model is an encoder-decoder whose encoder reads the prompt with the image's "
                         "tokens; VerboVision's encoder-decoders take the image alone in the encoder and the whole "
                         "text in the decoder")

_ACTIONS = "a vision-language-action policy: it predicts robot actions by flow matching, not text"

SUPPORT: dict[str, Support] = {
    "llava": Support(caches_features=True),
    "cohere2_vision": Support(caches_features=True),
    **dict.fromkeys(ROPE_INDEX_TYPES, Support(rope_index=True)),
    **{kind: Support(packs=False, packing_refusal=_OWN_ROPE) for kind in OWN_ROPE_TYPES},
    "gemma3": Support(processor_only=("num_crops",), caches_features=True, packs=False,
                      packing_refusal="transformers' mask for its image blocks (token_type_ids) lets packed examples "
                                      "attend to each other in its sliding-window layers"),
    "internvl": Support(processor_only=("num_patches",)),
    "paligemma": Support(prefix_lm=True, layout="prefix", prompt="caption en", packs=False,
                         packing_refusal="its prompts are attended both ways (token_type_ids 0), across the packed "
                                         "examples' boundaries"),
    "blip-2": Support(packs=False, packing_refusal="its forward turns a missing attention mask into ones, which hides "
                      "the examples' boundaries: each would attend to the ones before it in its row"),
    "aya_vision": Support(processor_only=("num_patches",)),
    "lfm3_vl": Support(packs=False, packing_refusal="its LM's short convolutions run along the whole row and read no "
                       "positions, so each packed example would see the end of the one before it"),
    "florence2": Support(refused=_ENCODER_READS_PROMPT),
    **dict.fromkeys(("instructblip", "instructblipvideo"), Support(
        refused="its forward requires qformer_input_ids (the prompt again, through the Q-Former's own tokenizer), "
                "which VerboVision does not give it")),
    **dict.fromkeys(("minicpmv4_6", "minicpmv4_7", "glm5_next"),
                    Support(packs=False, packing_refusal=_LINEAR_ATTENTION)),
    "kosmos-2": Support(refused="Kosmos2Processor has no image token (it marks the image's positions in a mask of its "
                                "own), and VerboVision places each image's features at its image tokens"),
    "shieldgemma2": Support(refused="an image-safety classifier: its processor ignores the text and asks its own "
                                    "policy questions, one prompt per image and policy"),
    "kosmos-2.5": Support(refused="its image's places are `<s>` tokens marked in a mask of its own "
                                  "(image_embeds_position_mask), taken with flattened patches and their sizes"),
    "pix2struct": Support(refused="its encoder reads flattened image patches with the prompt rendered into the image, "
                                  "not pixel values beside a text"),
    "udop": Support(refused="a document model: its encoder reads the page's OCR words with their boxes (bbox)"),
    "t5gemma2": Support(refused=_ENCODER_READS_PROMPT),
    "blip": Support(refused="its text decoder reads the image by cross-attention, not image tokens, and its generate "
                            "rewrites the prompt (first token to [DEC], the last one dropped as a [SEP])"),
    "idefics": Support(refused="which image each text token may see (image_attention_mask) is computed by its "
                               "processor from the text; VerboVision gives the image processor's tensors only"),
    "mllama": Support(refused="its language model cross-attends to the image tiles, batched per text, and which tokens "
                              "see them (cross_attention_mask) is computed by its processor from the text; VerboVision "
                              "gives the image processor's tensors only"),
    "evolla": Support(refused="a protein-text model: it reads protein sequences, not images"),
    "pi0": Support(refused=_ACTIONS),
    "pi05": Support(refused=_ACTIONS),
    "diffusion_gemma": Support(refused="it writes text by block diffusion, whole blocks at a time, not token by token: "
                                       "no next-token loss to train, no greedy decoding to caption with"),
    "mistral4": Support(refused="Mistral4ForCausalLM is a text-only language model: it takes no images"),
    "got_ocr2": Support(flat_images=True),
    "pp_chart2table": Support(refused="its processor expands no image token (a text must already hold each image's "
                                      "256 <imgpad> tokens, as its chat template writes them), and VerboVision "
                                      "expands each image's placeholder through the processor"),
}
"""Model types that differ from the defaults of `Support`; any other type that `AutoModelForImageTextToText` loads
gets the defaults. The family matrix (tests/test_family_matrix.py, the README's support table) shows which types
are tried."""


FAMILY_MATRIX = (
    "llava", "idefics3", "qwen2_vl", "git", "vision-encoder-decoder", "gemma3", "paligemma", "smolvlm", "blip-2",
    "qwen2_5_vl", "qwen3_vl", "llava_onevision1_5", "deepseek_vl", "deepseek_vl_hybrid", "llava_next",
    "llava_onevision", "aya_vision", "internvl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "qwen4_exp", "glm4v",
    "glm4v_moe", "glm46v", "glm_ocr", "cosmos3_omni", "cohere_compass", "cosmos3_edge", "chameleon", "emu3", "gemma4",
    "minicpmv4_6", "minicpmv4_7", "glmga", "glm5_next", "hy_v4_vl", "vipllava", "llava_next_video", "video_llava",
    "granite4_vision", "idefics2", "granite_docling", "got_ocr2", "qianfan_ocr", "ovis2", "ovis2_5", "janus", "aria",
    "lighton_ocr", "exaone4_5", "hyperclovax_vision_v2", "lfm3_vl", "video_llama_3", "paddleocr_vl", "hunyuan_vl",
    "dots3_note", "ernie4_5_vl_moe",
    "mistral3",
)
"""Model types tried end to end by the family matrix (tests/test_family_matrix.py, the README's support table):
caption, eval, a LoRA stage with its merge, the merged model reloaded in plain transformers."""

TRIED_ELSEWHERE = {
    "cohere2_vision": "what `verbo build` writes for a pixel_shuffle connector, trained by the geovlm seed recipe's "
                      "test",
}
"""Model types tried end to end outside the family matrix, and by what."""

_NEEDS_TORCHVISION = "its image processor exists only in a torchvision version, not installed where the matrix runs"

UNTRIED: dict[str, str] = {
    **dict.fromkeys(("apertus1p5", "gemma4_unified", "inkling2", "inkling2_loop", "inkling_mm_model", "kimi_k25",
                     "lfm2_vl", "llama4", "minicpm_ocr", "minimax_m3_vl", "molmo2", "muse_glimmer", "muse_spark",
                     "nemotron_h_omni", "perception_lm", "pp_formulanet", "step3p7", "unlimited_ocr"),
                    _NEEDS_TORCHVISION),
    "mistral_large4": "PixtralProcessor, the processor of its checkpoints, needs torchvision, not installed where "
                      "the matrix runs (its mistral3 row runs where torchvision is)",
    **dict.fromkeys(("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker"), "the thinker of an omni (audio, video, "
                    "image) model, whose processor belongs to the whole omni model type"),
    "gemma3n": "its vision tower (MobileNetV5) is a timm model, and timm is not installed where the matrix runs",
    "fuyu": "its PIL image processor cannot patchify the torch tensors its processor asks for (transformers 5.25): "
            "it runs only with the torchvision one, not installed where the matrix runs",
    "fast_vlm": "its vision tower (FastViT) is a timm model, and timm is not installed where the matrix runs",
    "deepseek_ocr2": "captions, evaluates and trains (tests/test_families_ocr_more.py), but with PEFT 0.21 a saved "
                     "LoRA adapter loads without its language-model weights, and is refused: PEFT applies the family's "
                     "checkpoint renaming (layers -> language_model.layers) to adapter keys that already have it",
}
"""Image-text model types of transformers that no test here has tried, and why: they take the defaults (images as
tokens in the text, `Support()`), and loading one says so once on stderr."""


@dataclass(frozen=True)
class Head:
    """What a family's forward does to its output head's values to make the logits: nothing (a plain Linear head), a
    scale, or a soft cap. The chunked loss applies the head itself, to labelled positions only, and then this."""

    op: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    """operator.mul or operator.truediv, as the forward applies it (the same operation keeps the same bits)."""
    factor: float | None = None
    softcap: float | None = None
    """Gemma's final_logit_softcapping: cap * tanh(values / cap)."""

    def logits(self, values: torch.Tensor) -> torch.Tensor:
        if self.op is not None and self.factor is not None:
            values = self.op(values, self.factor)
        if self.softcap is not None:
            values = torch.tanh(values / self.softcap) * self.softcap
        return values


_HEAD_ARITHMETIC: dict[str, Callable[[object], Head]] = {
    **dict.fromkeys(("aya_vision", "cohere_compass"), lambda text: Head(operator.mul, text.logit_scale)),
    **dict.fromkeys(("granite4_vision", "granite_docling"), lambda text: Head(operator.truediv, text.logits_scaling)),
    "hyperclovax_vision_v2": lambda text: Head(operator.mul, text.logits_scaling),
    **dict.fromkeys(("gemma4", "paligemma"),
                    lambda text: Head(softcap=getattr(text, "final_logit_softcapping", None))),
}
"""Model types whose forward does arithmetic on the output head's values (Cohere's logit_scale, Granite's
logits_scaling, Gemma's soft cap; HyperCLOVAX multiplies by its logits_scaling), from their text config. Cohere2Vision
and Gemma3's image-text forwards apply none, although their text configs have a logit_scale or a soft cap."""

_HEAD_ARITHMETIC_SINCE = {"aya_vision": "5.25", "paligemma": "5.25"}
"""Model types whose forward took up its arithmetic in a transformers release after the oldest VerboVision supports:
the first release tried that applies it (5.17 applies none). Releases before it take the plain loss: which one between
started applying it is untried."""

_HEAD_BEYOND_ARITHMETIC = frozenset({"chameleon"})
"""Model types whose forward changes logits in ways `Head` does not reproduce (Chameleon sets its image tokens' logits
to the minimum): their loss takes the plain path, the whole sequence's logits."""


def head_of(config) -> Head | None:
    """How a model type's forward makes logits from its output head (`Head`), for the types the family matrix
    compares the chunked loss with the plain one on; None (the plain loss) for every other type, untried."""
    import transformers
    from packaging.version import Version

    kind = config.model_type
    tried = kind in FAMILY_MATRIX or kind in TRIED_ELSEWHERE
    if not tried or kind in _HEAD_BEYOND_ARITHMETIC:
        return None
    if Version(transformers.__version__) < Version(_HEAD_ARITHMETIC_SINCE.get(kind, "0")):
        return None
    return _HEAD_ARITHMETIC[kind](config.get_text_config()) if kind in _HEAD_ARITHMETIC else Head()


@dataclass(frozen=True)
class Family:
    name: str
    """The model's config.model_type."""
    images: str
    """How the model takes images: IMAGES_IN_TEXT, PREFIX or ENCODER (see the table above)."""
    text_start: tuple[int, ...] = ()
    """Token ids every text starts with: GIT's [CLS], an encoder-decoder's decoder start token."""
    support: Support = Support()
    image_token_id: int | None = None
    """The token the model fills with image features (config.image_token_id), where its config names one."""
    head: Head | None = None
    """How its forward makes logits from the output head's values (`head_of`); None: the loss takes the plain path,
    the whole sequence's logits from the forward."""

    def model_inputs(self, batch: dict) -> dict:
        """Forward arguments of a batch (input_ids, attention_mask, pixel inputs...) for this family."""
        if self.images != ENCODER:
            return batch
        renamed = {"input_ids": "decoder_input_ids", "attention_mask": "decoder_attention_mask",
                   "position_ids": "decoder_position_ids"}
        return {renamed.get(k, k): v for k, v in batch.items()}

    def text_logits(self, logits: torch.Tensor, n_text: int) -> torch.Tensor:
        """The logits (or the output head's inputs) of the text positions: GIT's forward returns the image positions'
        first."""
        return logits[:, -n_text:] if self.images == PREFIX else logits  # [B, T, V or D]

    def images_per_text(self, images: list) -> list:
        """The `images=` argument of its processor for texts of one image each, in order."""
        return list(images) if self.support.flat_images else [[image] for image in images]

    def pixel_inputs(self, processed: dict) -> dict[str, torch.Tensor]:
        """The model's inputs among an image processor's outputs."""
        return {k: v for k, v in processed.items()
                if isinstance(v, torch.Tensor) and k not in self.support.processor_only}

    @property
    def images_in_text(self) -> bool:
        """Whether its texts hold image tokens that the image features replace (IMAGES_IN_TEXT)."""
        return self.images == IMAGES_IN_TEXT

    @property
    def takes_logits_to_keep(self) -> bool:
        """Whether its forward computes the logits of the last positions only when asked (`logits_to_keep`): GIT's
        and the encoder-decoders' do not."""
        return self.images == IMAGES_IN_TEXT

    @property
    def caches_features(self) -> bool:
        """Whether cached vision features can stand in for the pixels (see `Support.caches_features`)."""
        return self.support.caches_features

    @property
    def prefix_lm(self) -> bool:
        """Whether it takes `token_type_ids` for a prefix-LM mask (see `Support.prefix_lm`)."""
        return self.support.prefix_lm

    @property
    def own_layout(self) -> str | None:
        """Its own prompt layout for a model without a chat template (see `Support.layout`)."""
        return self.support.layout

    @property
    def caption_prompt(self) -> str | None:
        """What `caption` asks by default where the family has its own convention (see `Support.prompt`)."""
        return self.support.prompt

    @property
    def packs_rope_index(self) -> bool:
        """Whether packed rows take each sample's own M-RoPE positions as 4-row position_ids (`Support.rope_index`)."""
        return self.support.rope_index

    def check_packing(self) -> None:
        if not self.images_in_text:
            raise ConfigError(f"packing: not supported for {self.name} models (images outside the text); use "
                              "group_by_length instead")
        if not self.support.packs:
            raise ConfigError(f"packing: not supported for {self.name} models: {self.support.packing_refusal}; "
                              "use group_by_length instead")


IMAGE_TOKEN_FAMILY = Family("image-text-to-text", IMAGES_IN_TEXT)
"""Most VLMs: Llava, Idefics3/SmolVLM, Qwen2-VL, Cohere2Vision, PaliGemma, Gemma3..."""


def family_of(config) -> Family:
    """The family of a model config (a transformers PretrainedConfig); a model type VerboVision cannot work with is
    refused with the reason, one that no test has tried is noted on stderr (once a process)."""
    kind = config.model_type
    support = SUPPORT.get(kind, Support())
    if support.refused:
        raise ConfigError(f"{kind} models are not supported: {support.refused}")
    note_untried(kind)
    if kind == "git":
        return Family(kind, PREFIX, (config.bos_token_id,), support, head=head_of(config))
    if is_vision_encoder_decoder(config) or getattr(config, "is_encoder_decoder", False):
        if getattr(config.get_text_config(), "is_encoder_decoder", False):  # BLIP-2 with Flan-T5, any such type untried
            raise ConfigError(f"{kind} models are not supported: {_ENCODER_READS_PROMPT}")
        start = config.decoder_start_token_id
        if start is None:
            raise ConfigError(f"{kind}: config.decoder_start_token_id is not set; the decoder cannot start a text")
        return Family(kind, ENCODER, (start,), support, head=head_of(config))
    return Family(kind, IMAGES_IN_TEXT, support=support, image_token_id=getattr(config, "image_token_id", None),
                  head=head_of(config))


def is_vision_encoder_decoder(config) -> bool:
    """Whether a config is a VisionEncoderDecoder's (ViT + GPT-2...): a captioner, whose encoder `verbo build` can
    also take as its vision encoder."""
    return config.model_type == "vision-encoder-decoder"


_CLS_ENCODERS = frozenset({"clip_vision_model", "vit", "dinov2", "dinov3_vit", "deit"})
"""Vision encoder types whose sequence starts with a CLS token that is not an image patch."""


def starts_with_cls(vision_config) -> bool:
    """Whether a vision encoder's output starts with a CLS token, which a connector of `verbo build` leaves out."""
    return vision_config.model_type in _CLS_ENCODERS


def ties_in_vlm(text_config) -> bool:
    """Whether the VLM classes can tie a language model's output head to its embedding: GPT-2 names its embedding
    `wte`, which they cannot tie to; they keep an untied copy instead."""
    return text_config.model_type != "gpt2"


def component_kind(model_type: str) -> str | None:
    """What a model type that is no image-text model is, among what `verbo build` composes: "language" (a causal
    LM), "vision" (an image encoder) or None (neither)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_IMAGE_MAPPING_NAMES

    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "language"
    if model_type in MODEL_FOR_IMAGE_MAPPING_NAMES or model_type.endswith("_vision_model"):
        return "vision"
    return None


@cache
def note_untried(model_type: str) -> None:
    """Say, once, that an image-text model type is outside what VerboVision has tried: it may work, or fail where
    nothing has been checked for it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    tried = model_type in FAMILY_MATRIX or model_type in TRIED_ELSEWHERE or model_type in SUPPORT
    if tried or model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return
    why = UNTRIED.get(model_type, "a model type newer than VerboVision's family matrix")
    print(f"verbo: note: {model_type} models are untried by VerboVision ({why}); they take the generic image-token "
          "path: check a few outputs, and report what fails", file=sys.stderr)


@cache
def forward_parameters(model_class: type) -> frozenset[str]:
    """The inputs a model class's forward names; anything else lands in its **kwargs, where it may go unread."""
    parameters = inspect.signature(model_class.forward).parameters.values()
    return frozenset(p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def check_required_inputs(model: nn.Module, processor) -> None:
    """Refuse a model whose forward requires an input that VerboVision never gives it: it passes the tokenizer's ids
    and the image processor's tensors, not InstructBLIP's `qformer_input_ids` (the prompt again, through the
    Q-Former's own tokenizer)."""
    parameters = list(inspect.signature(type(model).forward).parameters.values())[1:]  # after self
    required = {p.name for p in parameters if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    given = {"input_ids", "attention_mask", *processor.image_processor.model_input_names}
    if missing := sorted(required - given):
        raise ConfigError(f"{model.config.model_type} models are not supported: {type(model).__name__}.forward "
                          f"requires {', '.join(missing)}, which VerboVision does not give it (only the tokenizer's "
                          "ids and the image processor's tensors)")


def without_peft(model: nn.Module) -> nn.Module:
    """The transformers model under any PEFT wrapping (the model itself where there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def named_inputs(model: nn.Module) -> frozenset[str]:
    """The inputs the forward of a model, under any PEFT wrapping, names."""
    return forward_parameters(type(without_peft(model)))


def check_consumed(model: nn.Module, inputs: dict) -> None:
    """Refuse forward inputs the model (under any PEFT wrapping) does not name: transformers forwards take **kwargs,
    so an input a release does not know (a newer keyword, a position or token-type tensor) would be dropped silently
    and the model trained or scored without it."""
    base = without_peft(model)
    named = forward_parameters(type(base))
    # An encoder-decoder's forward passes its decoder_* keywords on to the decoder's forward.
    decoder = forward_parameters(type(base.decoder)) if hasattr(base, "decoder") else frozenset()
    unknown = sorted(k for k in inputs if k not in named and k.removeprefix("decoder_") not in decoder)
    if unknown:
        import transformers

        raise ConfigError(f"{type(base).__name__}.forward in transformers {transformers.__version__} does not take "
                          f"{', '.join(unknown)}; it would ignore them. Upgrade transformers (pip install -U "
                          "transformers) or report this model type to VerboVision")


def strip_peft(name: str) -> str:
    return name.removeprefix(_PEFT_PREFIX)


class Components:
    """Which of a model's modules make up its vision, connector and language components."""

    def __init__(self, model: nn.Module):
        names = {strip_peft(n) for named in (model.named_modules(), model.named_parameters()) for n, _ in named}
        self.prefixes = {c: tuple(p for p in candidates if p in names) for c, candidates in COMPONENT_MODULES.items()}
        missing = [c for c in ("vision", "language") if not self.prefixes[c]]
        if missing:
            top = sorted({n.split(".")[0] for n in names if n})
            raise ConfigError(f"{type(model).__name__}: cannot find its {' and '.join(missing)} component "
                              f"(top-level modules: {top}); per-component training needs transformers' usual names")
        self._by_length = sorted(((p, c) for c, ps in self.prefixes.items() for p in ps), key=lambda x: -len(x[0]))

    def of(self, name: str) -> str | None:
        """The component a module or parameter name belongs to (None for modules outside all three)."""
        name = strip_peft(name)
        return next((c for p, c in self._by_length if name == p or name.startswith(p + ".")), None)

    def modules(self, model: nn.Module, component: str):
        """(name, module) of every module inside a component."""
        return [(n, m) for n, m in model.named_modules() if self.of(n) == component]
