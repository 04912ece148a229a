"""The vision feature cache: same losses as encoding every step, reused across stages, invalidated on change."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from verbovision.config.parse import parse_recipe
from verbovision.data.batching import Collator
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.errors import ConfigError
from verbovision.families import family_of
from verbovision.model.features import FeatureCache, cache_key, embeds_with_features
from verbovision.model.loss import token_loss
from verbovision.model.store import load_model
from verbovision.train.run import train_recipe

from .helpers import stage, tiny_recipe

FROZEN_VISION = {"vision": "frozen", "connector": "full", "language": "full"}


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-6), ("float16", 2e-3)])
def test_cached_training_matches_uncached(tmp_path, shapes_data, dtype, tolerance):
    runs = {}
    for cached in (True, False):
        recipe = parse_recipe(tiny_recipe(shapes_data, [
            stage("s", train=FROZEN_VISION, max_steps=6, log_every=1, feature_cache=cached,
                  feature_cache_dtype=dtype)]))
        runs[cached] = tmp_path / f"run-{cached}"
        train_recipe(recipe, runs[cached])
    assert (runs[True] / "feature_cache").exists() and not (runs[False] / "feature_cache").exists()
    (train_with, val_with), (train_without, val_without) = losses(runs[True]), losses(runs[False])
    assert len(train_with) == 6
    for a, b in zip(train_with + val_with, train_without + val_without):
        assert abs(a - b) <= tolerance * max(1.0, abs(b)), (a, b)


def test_cache_reused_across_stages_and_invalidated_on_change(tmp_path, shapes_data):
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    recipe = parse_recipe(tiny_recipe(data, [stage("a", train=FROZEN_VISION), stage("b", train=FROZEN_VISION)]))
    run = tmp_path / "run"
    train_recipe(recipe, run)
    caches = list((run / "feature_cache").iterdir())
    assert len(caches) == 1, "both stages share one frozen encoder, so one cache"
    shards = sorted(p.name for p in caches[0].glob("shard-*.safetensors"))
    assert len(shards) == 1, "the second stage found every image cached"

    model, processor = load_model(run / "init", device="cpu")
    cache = FeatureCache(run / "feature_cache", model, processor)
    images = sorted((data / "images").glob("*.png"))[:2]
    before = cache.get(images)
    images[0].write_bytes(images[1].read_bytes())  # an image edited between runs is encoded again
    cache = FeatureCache(run / "feature_cache", model, processor)
    assert cache.ensure(images) == {}
    assert len(list(caches[0].glob("shard-*.safetensors"))) == 2
    assert torch.allclose(cache.get(images)[0].float(), before[1].float(), atol=1e-2)

    key = cache_key(model, processor, "float16")
    processor.image_processor.image_mean = [0.4, 0.4, 0.4]
    assert cache_key(model, processor, "float16") != key
    with torch.no_grad():
        next(model.model.vision_tower.parameters()).add_(1e-3)
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert cache_key(model, processor, "float16") != key


def test_unreadable_images_are_reported_not_cached(tmp_path, shapes_data):
    model, processor = load_model(_tiny_model(tmp_path, shapes_data), device="cpu")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    good = sorted((shapes_data / "images").glob("*.png"))[0]
    failed = FeatureCache(tmp_path / "cache", model, processor).ensure([good, bad, tmp_path / "gone.png"])
    assert set(failed) == {bad, tmp_path / "gone.png"} and "unreadable image" in failed[bad]


def _tiny_model(tmp_path, shapes_data):
    train_recipe(parse_recipe(tiny_recipe(shapes_data, [stage("s", max_steps=1)])), tmp_path / "m")
    return tmp_path / "m/final"


def _batches(tmp_path, shapes_data):
    """The same four examples batched from pixels and from cached features, with the model."""
    model, processor = load_model(_tiny_model(tmp_path, shapes_data), device="cpu")
    encoder = Encoder(processor, "plain", family=family_of(model.config))
    examples = [encoder.encode(r) for r in list(read_records(shapes_data / "train/caption_short_en.json"))[:4]]
    cache = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    assert cache.ensure([p for e in examples for p in e.images]) == {}
    pixels, features = Collator(encoder)(examples).batch, Collator(encoder, features=cache)(examples).batch
    return model, pixels, features


def test_cached_features_reach_the_model(tmp_path, shapes_data):
    """Cached features give the loss the pixels give, and the images matter to it: were the features dropped on the
    way (a transformers release that swallows an unknown keyword), the loss would be the text-only one."""
    model, pixels, features = _batches(tmp_path, shapes_data)
    assert "pixel_values" not in features and "image_features" in features
    with torch.no_grad():
        family = family_of(model.config)
        from_pixels = token_loss(model, pixels, "cpu", family)
        from_features = token_loss(model, features, "cpu", family)
        text_only = token_loss(model, {k: v for k, v in pixels.items() if k != "pixel_values"}, "cpu", family)
        shuffled = token_loss(model, {**features, "image_features": features["image_features"].flip(0)}, "cpu", family)
    assert abs(from_features.item() - from_pixels.item()) < 1e-5
    assert abs(text_only.item() - from_features.item()) > 1e-4, "a dropped feature input would give this loss"
    assert abs(shuffled.item() - from_features.item()) > 1e-4, "other images, other loss: the features are used"


def test_feature_path_computes_in_the_connectors_float_dtype(tmp_path, shapes_data):
    """Under bitsandbytes the connector's first parameter can be a packed uint8 weight; the features must still be
    cast to its floating-point compute dtype (casting them to uint8 crashed QLoRA on pixel-shuffle models)."""
    model, _, features = _batches(tmp_path, shapes_data)
    with torch.no_grad():
        expected = embeds_with_features(model, features["input_ids"], features["image_features"])
        projector = model.model.multi_modal_projector
        packed = torch.nn.Parameter(torch.zeros(4, dtype=torch.uint8), requires_grad=False)
        projector._parameters = {"packed": packed, **projector._parameters}  # first, as a packed weight would be
        assert next(projector.parameters()).dtype == torch.uint8
        got = embeds_with_features(model, features["input_ids"], features["image_features"])
    assert torch.equal(got, expected)


def test_inputs_a_forward_does_not_name_are_refused(tmp_path, shapes_data):
    model, pixels, _ = _batches(tmp_path, shapes_data)
    with pytest.raises(ConfigError, match=r"does not take cached_image_features; it would ignore them"):
        token_loss(model, {**pixels, "cached_image_features": torch.zeros(1)}, "cpu", family_of(model.config))
