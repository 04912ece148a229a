"""Vision feature cache: when the vision tower is frozen, encode each image once and reuse it every step and stage.

What is cached is exactly what the connector consumes (the selected hidden state of the vision tower, CLS removed
where the model drops it), so training with the cache runs the same connector and LM computation as without it.
Features live in safetensors shards (fp16 or bf16 by default), memory-mapped when read. The cache folder's name is a
content hash of everything that determines the features — the encoder weights, the image preprocessing and the
feature selection — so a change to any of them starts a fresh cache instead of reusing stale features."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.images import image_key, load_images
from ..errors import DataError
from ..families import without_peft
from ..files import read_json, write_json

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def vlm_core(model):
    """The transformers VLM under any PEFT wrapping (the module holding vision_tower / multi_modal_projector)."""
    return without_peft(model).model


@torch.no_grad()
def connector_inputs(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """What the connector consumes for these images: [n_images, n_patches, D_vision]."""
    config = model.config
    core = vlm_core(model)
    # Llava-style models pick a hidden state by index (so -1 is before the final norm); Cohere2Vision takes
    # the tower's last_hidden_state.
    layer = getattr(config, "vision_feature_layer", None)
    if layer is not None and not isinstance(layer, int):
        raise DataError("the feature cache supports a single vision_feature_layer, not a list")
    outputs = core.vision_tower(pixel_values.to(core.vision_tower.dtype), output_hidden_states=layer is not None,
                                return_dict=True)
    features = outputs.last_hidden_state if layer is None else outputs.hidden_states[layer]
    if getattr(config, "vision_feature_select_strategy", "full") == "default":
        features = features[:, 1:]  # the model drops the CLS token before its connector
    return features


def embeds_with_features(model, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The input embeddings with the image tokens replaced, in order, by the connector's output for cached features:
    what the VLM's forward computes from pixel values, given to it as `inputs_embeds`. Every transformers 5 release
    takes `inputs_embeds`; the forward's own keyword for precomputed features is newer, and a release without it
    swallows it unread (the images would silently never reach the model)."""
    projector = vlm_core(model).multi_modal_projector
    # The projector's compute dtype: under bitsandbytes its first parameter may be a packed uint8 weight.
    dtype = next(p.dtype for p in projector.parameters() if p.is_floating_point())
    embeds = model.get_input_embeddings()(input_ids)  # [B, T, D_lm]
    image_embeds = projector(features.to(dtype))  # [n_images, n_tokens, D_lm] (older Cohere2Vision: [n, h, w, D_lm])
    image_embeds = image_embeds.reshape(-1, embeds.shape[-1])
    placeholders = input_ids == model.config.image_token_id  # [B, T]
    if int(placeholders.sum()) != image_embeds.shape[0]:
        raise DataError(f"{int(placeholders.sum())} image tokens in the batch's text but the cached features of its "
                        f"images give {image_embeds.shape[0]}")
    return embeds.masked_scatter(placeholders[..., None], image_embeds.to(embeds.dtype))


def cache_key(model, processor, dtype: str) -> str:
    """Hash of the encoder weights, the image preprocessing and the feature selection."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vlm_core(model).vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    config = model.config
    settings = {
        "image_processor": processor.image_processor.to_dict(),
        "feature_layer": getattr(config, "vision_feature_layer", None),
        "select": getattr(config, "vision_feature_select_strategy", "full"),
        "dtype": dtype,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def image_id(source) -> str:
    """An image's identity; for a file also its size and modification time, so an edited file is re-encoded."""
    if not isinstance(source, Path):
        return image_key(source)  # shard member or in-memory bytes: offset or content hash
    stat = source.stat()
    return f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


class FeatureCache:
    """Encoded images on disk: index.json maps image id -> (shard, row); shards are safetensors files."""

    def __init__(self, root: Path, model, processor, dtype: str = "float16", batch_size: int = 32,
                 shard_size: int = 2048):
        self.dir = Path(root) / cache_key(model, processor, dtype)
        self.model, self.processor = model, processor
        self.dtype = DTYPES[dtype]
        self.batch_size, self.shard_size = batch_size, shard_size
        self.index: dict[str, list] = read_json(self.dir / "index.json", {})
        self._handles: dict[str, object] = {}
        self._ids: dict[Path, str] = {}

    def _id(self, path: Path) -> str:
        if path not in self._ids:
            self._ids[path] = image_id(path)
        return self._ids[path]

    def ensure(self, paths: Sequence[Path]) -> dict[Path, str]:
        """Encode the images not cached yet; returns the images that could not be read, with the reason."""
        missing, failed = [], {}
        for path in dict.fromkeys(paths):
            try:
                if self._id(path) not in self.index:
                    missing.append(path)
            except OSError:
                failed[path] = f"{path}: image not found"
        for start in range(0, len(missing), self.shard_size):
            failed.update(self._write_shard(missing[start : start + self.shard_size]))
        return failed

    def _write_shard(self, paths: list[Path]) -> dict[Path, str]:
        good, failed, chunks = [], {}, []
        for start in range(0, len(paths), self.batch_size):
            loaded, images, unreadable = load_images(paths[start : start + self.batch_size], lambda path: [path])
            good += loaded
            failed.update((path, str(e)) for path, e in unreadable)
            if images:
                pixels = self.processor.image_processor([image for [image] in images],
                                                        return_tensors="pt")["pixel_values"]
                device = next(self.model.parameters()).device
                chunks.append(connector_inputs(self.model, pixels.to(device)).to(self.dtype).cpu())
        if good:
            name = f"shard-{len(set(v[0] for v in self.index.values())):05d}.safetensors"
            tmp = self.dir / f".{name}.tmp"
            self.dir.mkdir(parents=True, exist_ok=True)
            save_file({"features": torch.cat(chunks)}, str(tmp))
            tmp.replace(self.dir / name)
            self.index.update({self._id(p): [name, row] for row, p in enumerate(good)})
            write_json(self.dir / "index.json", self.index)
        return failed

    def get(self, paths: Sequence[Path]) -> torch.Tensor:
        """Features of these images (all cached), stacked: [n_images, n_patches, D_vision]."""
        rows = []
        for path in paths:
            shard, row = self.index[self._id(path)]
            if shard not in self._handles:
                self._handles[shard] = safe_open(str(self.dir / shard), framework="pt")
            rows.append(self._handles[shard].get_slice("features")[row : row + 1])
        return torch.cat(rows)
