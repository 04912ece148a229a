"""What a recipe may say: the typed blocks of a recipe, each field with its docstring."""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import ConnectorSpec, LanguageSpec, ModelSpec, VisionSpec
from .sources import Source

TRAINABILITY = ("frozen", "full", "lora", "cross_attention")
# best_metric name -> the corpus score it reads (from verbovision.evaluate.metrics.score)
BEST_METRICS = {"val_loss": "val_loss", "cider": "CIDEr", "bleu": "Bleu_4", "rouge_l": "ROUGE_L", "meteor": "METEOR",
                "exact_match": "exact_match", "vqa": "vqa", "numeric": "numeric", "choice": "choice"}
COMPONENTS = ("vision", "connector", "language")
STAGE_TYPES = ("sft", "scst")
SCST_BASELINES = ("greedy", "mean")
SCST_REWARDS = ("cider", "bleu")
DTYPES = ("auto", "float32", "bfloat16", "float16")
"""What weights load in (`model.dtype`, `--dtype`): auto is bfloat16 on a CUDA GPU that supports it, else float32."""


@dataclass
class LoraSpec:
    """LoRA settings, applied to the components whose trainability is `lora`."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target: str | list[str] = "all-linear"
    """all-linear (every linear layer of the LoRA components) or a list of module name suffixes (q_proj, ...)."""


@dataclass
class StageData:
    """The data of one stage."""

    train: list[Source] = field(default_factory=list)
    """Training sources, each with a mixing weight."""
    val: list[Source] = field(default_factory=list)
    """Validation sources (loss, best checkpoint, early stopping)."""


@dataclass
class EvalBenchmark:
    """A benchmark of `verbo eval --benchmark` scored at each validation of a stage and logged beside its losses."""

    name: str = ""
    """As --benchmark names it: coco-karpathy, nocaps, flickr30k, textcaps, vqav2, ..."""
    data_dir: str = ""
    """As --data-dir of `verbo eval --benchmark`: the folder of its official files, laid out as it publishes them, or
    a local copy of its hub dataset (relative paths start at data_root); a hub dataset id; empty: the benchmark's
    own hub dataset (README: Benchmarks)."""
    limit: int | None = 100
    """Items scored: a sample of its default split drawn with seed 0, the same at every validation (null: all)."""


@dataclass
class Stage:
    """One training stage."""

    name: str = "stage"
    """Used for the stage's folder in the run."""
    type: str = "sft"
    """sft (supervised, cross-entropy) or scst (self-critical sequence training on caption references)."""
    data: StageData = field(default_factory=StageData)
    """Training and validation sources."""
    template: str = "chat"
    """chat (the model's chat template; a model without one, of a family with its own layout, gets that layout),
    plain (image and prompt, then reply, for caption pretraining), caption (the image, then the reply alone, no
    prompt: how image captioners such as GIT and ViT-GPT2 are trained) or prefix (PaliGemma's: the images, BOS, the
    prompt and a newline, then the reply)."""
    train: dict[str, str] = field(default_factory=lambda: {"vision": "frozen", "connector": "full", "language": "full"})
    """Per component (vision, connector, language): frozen, full, lora, last:N (the last N layers train), or
    cross_attention (an encoder-decoder's decoder cross-attention only)."""
    lora: LoraSpec = field(default_factory=LoraSpec)
    """LoRA settings for the `lora` components."""
    lr: float = 1e-4
    """Peak learning rate."""
    lr_vision: float | None = None
    """Learning rate of the vision component (default: lr)."""
    lr_connector: float | None = None
    """Learning rate of the connector (default: lr)."""
    lr_language: float | None = None
    """Learning rate of the language component (default: lr)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    schedule: str = "cosine"
    """cosine, linear or constant, after warmup."""
    warmup: float = 0.03
    """Warmup: a fraction of the total steps when < 1, else a number of steps."""
    epochs: float = 1
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides epochs."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping norm; null or 0: no clipping (0 as in other trainers)."""
    gradient_checkpointing: bool | list[str] = False
    """Recompute activations in the backward pass to save memory: true for every layer, or the components whose
    layers it applies to (vision, connector, language)."""
    bf16: bool = False
    """Compute forward and backward in bfloat16 (autocast) while the weights stay float32 (`model.dtype: float32`),
    as do the optimizer states. With 16-bit weights (`model.dtype` bfloat16, or auto on a GPU) the forward runs
    under autocast in their dtype anyway, and this changes nothing."""
    compile: str | None = None
    """torch.compile backend for the model's forward: inductor (generates kernels; the first steps are slow while
    it compiles, which pays off on long runs) or any other torch.compile backend; null runs eagerly."""
    feature_cache: bool = True
    """Encode each image once and reuse the vision features when the vision tower is frozen."""
    packing: int | None = None
    """Token budget of a packed row: consecutive samples share a row, each with its own positions, attention never
    crossing samples (batch_size then counts rows). null: one sample per row."""
    group_by_length: bool = False
    """Without packing: batch samples of similar length together (less padding); batches still come in random order."""
    feature_cache_dtype: str = "float16"
    """Storage type of cached features: float16, bfloat16 or float32 (exact)."""
    cache_pixels: bool = False
    """Keep each image file's processed pixels in memory (up to 1 GiB) once read: later epochs skip decoding and
    preprocessing. For small datasets trained for many epochs (the quickstart); not kept across data_workers' epochs."""
    data_workers: int = 0
    """DataLoader worker processes that read and process the next batches' images while the model trains (the
    batches and their order are the same as without); 0 does it in the training process."""
    stream_buffer: int = 1000
    """Rows held for shuffling streamed training sources (hf-stream): memory holds this many rows, images included."""
    stream_shards: int = 1
    """Shards of a streamed source read at once to fill the shuffle buffer (datasets' max_buffer_input_shards):
    more mix better, and each holds its current parquet row group in memory."""
    max_length: int = 2048
    """Longest tokenized example; what happens to longer ones is `truncation`."""
    truncation: str = "drop"
    """Records over max_length: drop (skip and count) or truncate (cut text after the image tokens, never through)."""
    eval_every: int | None = None
    """Validate every N optimizer steps (N >= 1); null validates at the end of each epoch."""
    best_metric: str = "val_loss"
    """What picks the best checkpoint: val_loss (lower is better) or a generation metric on the validation records
    (higher is better): cider, bleu, rouge_l, meteor, exact_match, vqa, numeric, choice."""
    best_metric_records: int = 200
    """Validation records generated on for a generation metric."""
    keep_best: bool = True
    """Restore the weights of the best validation by best_metric (the lowest val_loss by default) at the end of the
    stage."""
    early_stopping: int | None = None
    """Stop after this many validations without improvement (>= 1); null never stops early."""
    eval_benchmarks: list[EvalBenchmark] = field(default_factory=list)
    """Benchmarks scored at each validation (greedy, each with its own prompt and token limit) and logged as
    `<benchmark>/<metric>`, e.g. `coco-karpathy/CIDEr`; they need data.val (no validation runs without it)."""
    merge: bool = False
    """Fold the stage's LoRA adapter into the model that the next stage starts from (the adapter is kept)."""
    save_every: int | None = None
    """Write a resumable checkpoint every N optimizer steps (N >= 1); null: twice per epoch (halfway and at its end). The
    stage's last step is always checkpointed."""
    keep: int = 2
    """How many recent checkpoints to keep; older ones are deleted."""
    log_every: int = 10
    """Log training loss every N optimizer steps."""
    scst_samples: int = 5
    """SCST: captions sampled per image (K)."""
    scst_baseline: str = "greedy"
    """SCST: what a sample's reward is compared with: greedy (the greedy caption's) or mean (the other samples')."""
    scst_reward: dict[str, float] = field(default_factory=lambda: {"cider": 1.0})
    """SCST: reward as weighted per-caption metrics: cider (CIDEr-D, document frequencies of the training references:
    2 or more images whose references differ) and bleu (BLEU-4)."""
    scst_temperature: float = 1.0
    """SCST: sampling temperature."""
    scst_top_k: int | None = None
    """SCST: sample among the k most likely tokens; null: all tokens."""
    scst_top_p: float | None = None
    """SCST: nucleus sampling mass; null: all tokens."""
    scst_max_new_tokens: int = 32
    """SCST: longest sampled or greedy caption in tokens."""
    scst_entropy: float = 0.0
    """SCST: weight of the entropy bonus on the sampled positions (0: none)."""
    scst_kl: float = 0.0
    """SCST: weight of the KL penalty to the model as it was at the stage's start (0: none, and no frozen copy)."""


ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")
"""What `model.attn_implementation` may be."""


@dataclass
class ModelBlock:
    """Where the model comes from: an existing VLM (`from`) or a composition to build."""

    from_: str | None = None
    """Hub id or local directory of an existing VLM, or a finished run folder (its final model); written `from:` in
    YAML."""
    vision: VisionSpec = field(default_factory=VisionSpec)
    """Vision encoder to build with."""
    language: LanguageSpec = field(default_factory=LanguageSpec)
    """Language model to build with."""
    connector: ConnectorSpec = field(default_factory=ConnectorSpec)
    """Connector between them."""
    image_token: str = "<image>"
    """The model's image placeholder token."""
    dtype: str = "auto"
    """What the weights load in: auto (bfloat16 on a CUDA GPU that supports it, float32 on the CPU, MPS and elsewhere),
    float32 or bfloat16 (float16 trains without the loss scaling it needs: refused). With 16-bit weights, what trains
    (LoRA adapters, full or last:N components) is kept in float32, as are its optimizer states, and each forward
    runs under autocast in the weights' dtype (stage `bf16` then changes nothing). A stage saves its model in this
    dtype (config.json's `dtype` records it); adapters stay float32."""
    quantize: str = "none"
    """QLoRA: load each stage's base in 4bit or 8bit (bitsandbytes: CUDA; 4bit on the CPU too); LoRA trains on top
    and merges go onto the full-precision base."""
    attn_implementation: str = "auto"
    """The attention kernels each stage's model loads with: `auto` takes FlashAttention-2 on CUDA in float16 /
    bfloat16 where the flash_attn package is installed and the model supports it, else PyTorch's fused `sdpa` where
    the model supports it, else `eager`; sdpa, flash_attention_2 or eager force one."""

    def spec(self) -> ModelSpec:
        return ModelSpec(self.vision, self.language, self.connector, self.image_token)


@dataclass
class Recipe:
    """A whole training recipe."""

    name: str = "recipe"
    """Recipe name, recorded in the run."""
    seed: int = 0
    """Seed for initialisation, data order and dropout."""
    data_root: str = "."
    """Folder that relative data paths are resolved against."""
    model: ModelBlock = field(default_factory=ModelBlock)
    """The model block."""
    stages: list[Stage] = field(default_factory=list)
    """Training stages, run in order; each starts from the previous stage's result."""
