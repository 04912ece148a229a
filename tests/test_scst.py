"""SCST: the loss, its baselines and gradients, the decoding strategies it relies on, and a `type: scst` stage."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml

from verbovision.cli.common import add_decode_options, decode_options_from_flags
from verbovision.config.parse import parse_recipe
from verbovision.data.batching import Collator
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.errors import ConfigError, DataError
from verbovision.evaluate.ptb import ptb_tokenize
from verbovision.infer.greedy import eos_token_ids
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.train.run import train_recipe
from verbovision.train.scst import Reward, advantages, continuation_inputs, policy_loss, reply_mask

from .helpers import stage, tiny_recipe

CAPTIONS = "train/caption_short_en.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_data):
    """A tiny model after a few cross-entropy steps, so that its replies are words rather than noise."""
    run = tmp_path_factory.mktemp("scst") / "run"
    train_recipe(parse_recipe(tiny_recipe(shapes_data, [stage("ce", max_steps=20, template="plain")])), run)
    return run / "final"


def _reward(shapes_data) -> tuple[Reward, list[list[str]]]:
    records = read_records(shapes_data / CAPTIONS)
    references = [ptb_tokenize(r.references) for r in records]
    return Reward(references, {"cider": 1.0, "bleu": 0.5}), references


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_loss_is_zero_when_samples_equal_the_greedy_caption(shapes_data, baseline):
    reward, references = _reward(shapes_data)
    k, caption = 4, "a red circle"
    rewards = reward([caption] * (k + 1), [references[0]] * (k + 1))
    advantage = advantages(torch.tensor(rewards[:k]).view(1, k), torch.tensor(rewards[k:]), baseline)
    logits = torch.randn(k, 9, 50, requires_grad=True)  # [K, P+L, V]
    tokens = torch.randint(0, 50, (1, 5)).expand(k, 5)  # [K, L] the same caption K times
    loss = policy_loss(logits, tokens, torch.ones(k, 5), advantage)
    assert loss.item() == 0.0
    # and a different sample is not: the zero above comes from the baseline, not from a loss that is always zero
    rewards[0] = rewards[k] + 1.0
    advantage = advantages(torch.tensor(rewards[:k]).view(1, k), torch.tensor(rewards[k:]), baseline)
    assert policy_loss(logits, tokens, torch.ones(k, 5), advantage).item() != 0.0


def test_rewards_prefer_the_reference(shapes_data):
    reward, references = _reward(shapes_data)
    reference = read_records(shapes_data / CAPTIONS)[0].references[0]
    good, bad = reward([reference, "purple banana seven"], [references[0]] * 2)
    assert good > bad >= 0


def test_mean_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([[1.0, 2.0, 6.0]])  # [B=1, K=3]
    assert advantages(rewards, torch.tensor([5.0]), "mean").tolist() == [1 - 4, 2 - 3.5, 6 - 1.5]
    assert advantages(rewards, torch.tensor([5.0]), "greedy").tolist() == [-4.0, -3.0, 1.0]


def test_gradients_flow_only_through_sampled_tokens():
    prompt, length, vocab, eos = 6, 5, 20, 3
    tokens = torch.tensor([[5, 7, eos, 9, 9], [8, 8, 8, 8, 8]])  # [N, L] row 0 ends at its EOS, row 1 never does
    mask = reply_mask(tokens, frozenset([eos]))
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    logits = torch.randn(2, prompt + length, vocab, requires_grad=True)  # [N, P+L, V]
    advantage = torch.tensor([0.7, -1.3])
    loss = policy_loss(logits, tokens, mask, advantage, entropy_weight=0.1)
    loss.backward()
    grad = logits.grad.abs().sum(-1)  # [N, P+L]
    # logits at position p predict token p+1: the reply's tokens are read from positions P-1 .. P+L-2
    assert grad[:, : prompt - 1].eq(0).all()  # the prompt
    assert grad[0, prompt - 1 + 3 :].eq(0).all()  # row 0 after its EOS
    assert grad[1, -1].eq(0)  # the logits after the last token predict nothing
    assert grad[0, prompt - 1 : prompt - 1 + 3].gt(0).all() and grad[1, prompt - 1 : -1].gt(0).all()
    perturbed = logits.detach().clone()
    perturbed[:, : prompt - 1] += torch.randn(2, prompt - 1, vocab) * 10
    assert torch.equal(policy_loss(perturbed, tokens, mask, advantage, entropy_weight=0.1), loss.detach())
    # the last L+1 positions alone (what the stage computes) give the same loss
    suffix = logits.detach()[:, -length - 1 :]
    assert torch.allclose(policy_loss(suffix, tokens, mask, advantage, entropy_weight=0.1), loss.detach())


def test_kl_penalty_is_zero_against_itself_and_positive_otherwise():
    tokens, mask, advantage = torch.tensor([[1, 2, 3]]), torch.ones(1, 3), torch.zeros(1)
    logits = torch.randn(1, 4, 10)
    assert policy_loss(logits, tokens, mask, advantage, reference_logits=logits, kl_weight=1.0).abs().item() < 1e-6
    other = torch.randn(1, 4, 10)
    assert policy_loss(logits, tokens, mask, advantage, reference_logits=other, kl_weight=1.0).item() > 0


def _images(shapes_data, n: int) -> list:
    return [r.images[0] for r in read_records(shapes_data / CAPTIONS)[:n]]


def test_one_beam_equals_greedy(trained, shapes_data):
    vlm = VLM(trained, device="cpu")
    images = _images(shapes_data, 4)
    greedy = vlm.caption(images, options=DecodeOptions(max_new_tokens=12))
    one_beam = vlm.caption(images, options=DecodeOptions(max_new_tokens=12, beams=1, length_penalty=2.0))
    assert one_beam == greedy
    # and greedy is the argmax at every step, decoded by hand without a cache
    record = vlm.encoder.encode(_caption_record(images[0]), for_generation=True)
    ids = torch.tensor([record.input_ids])
    pixels = vlm.encoder.pixel_inputs([_open(images[0])])["pixel_values"]
    with torch.no_grad():
        for _ in range(12):
            token = vlm.model(input_ids=ids, pixel_values=pixels).logits[0, -1].argmax()
            if int(token) in vlm.eos_ids:
                break
            ids = torch.cat([ids, token.view(1, 1)], 1)
    by_hand = vlm.processor.tokenizer.decode(ids[0, len(record.input_ids) :], skip_special_tokens=True).strip()
    assert by_hand == greedy[0]
    beams = vlm.caption(images, options=DecodeOptions(max_new_tokens=12, beams=3, length_penalty=0.5,
                                                      early_stopping=True))
    assert len(beams) == 4 and all(isinstance(b, str) for b in beams)


def _caption_record(image):
    from verbovision.data.records import CAPTION_PROMPT
    from verbovision.infer.messages import prompt_record

    return prompt_record(image, CAPTION_PROMPT)


def _open(image):
    from verbovision.data.images import load_image

    return load_image(image)


def test_sampling_with_a_seed_is_reproducible(trained, shapes_data):
    vlm = VLM(trained, device="cpu")
    images = _images(shapes_data, 6)

    def sample(seed):
        return vlm.caption(images, options=DecodeOptions(max_new_tokens=10, temperature=1.5, top_k=50, seed=seed))

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_min_new_tokens_and_no_repeat_ngram_reach_generate(trained, shapes_data):
    vlm = VLM(trained, device="cpu")
    records = [_caption_record(image) for image in _images(shapes_data, 3)]
    details = vlm.generate_details(records, DecodeOptions(max_new_tokens=8, min_new_tokens=8))
    assert all(d.completion_tokens == 8 for d in details)
    kwargs = DecodeOptions(no_repeat_ngram_size=2, beams=2, early_stopping=True).generate_kwargs()
    assert kwargs["no_repeat_ngram_size"] == 2 and kwargs["early_stopping"] is True


def test_decode_flags_of_the_cli():
    parser = argparse.ArgumentParser()
    add_decode_options(parser)
    options = decode_options_from_flags(parser.parse_args(
        ["--beams", "4", "--length-penalty", "0.8", "--early-stopping", "--no-repeat-ngram-size", "3",
         "--min-new-tokens", "2", "--stop", ".", "--stop", "\n"]))
    assert (options.beams, options.length_penalty, options.early_stopping) == (4, 0.8, True)
    assert (options.no_repeat_ngram_size, options.min_new_tokens, options.stop) == (3, 2, (".", "\n"))
    assert decode_options_from_flags(parser.parse_args([])) == DecodeOptions()


def test_reply_log_probs_match_generation(trained, shapes_data):
    """The loss's forward pass over left-padded prompts + replies sees the logits generation sampled from."""
    vlm = VLM(trained, device="cpu")
    records = [_caption_record(image) for image in _images(shapes_data, 3)]
    records[1].turns[0].text += " Please."  # prompts of different lengths: some rows are left-padded
    encoder = Encoder(vlm.processor, "plain")
    prompts = Collator(encoder, pad_left=True).pad([encoder.encode(r, for_generation=True) for r in records])
    prompts.pop("labels")
    prompts.update(encoder.pixel_inputs([_open(r.images[0]) for r in records]))
    out = vlm.model.generate(**prompts, max_new_tokens=6, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=encoder.tokenizer.pad_token_id)
    tokens = out.sequences[:, prompts["input_ids"].shape[1] :]  # [N, L]
    mask = reply_mask(tokens, eos_token_ids(vlm.model, vlm.processor))
    with torch.no_grad():
        logits = vlm.model(**continuation_inputs(prompts, tokens, mask), logits_to_keep=tokens.shape[1] + 1).logits
    generated = torch.stack(out.logits, 1)  # [N, L, V]
    counted = mask.bool()
    assert torch.allclose(logits[:, :-1][counted], generated[counted], atol=1e-4)


def test_scst_stage_end_to_end(tmp_path, shapes_data):
    captions = {"train": [CAPTIONS], "val": ["val/caption_short_en.json"]}
    recipe = parse_recipe(tiny_recipe(shapes_data, [
        stage("ce", max_steps=5, template="plain"),
        stage("rl", type="scst", template="plain", data=captions, max_steps=3, log_every=1, batch_size=2,
              best_metric="cider", best_metric_records=4, scst_samples=3, scst_baseline="mean",
              scst_reward={"cider": 1.0, "bleu": 0.5}, scst_kl=0.05, scst_entropy=0.01, scst_top_k=20,
              train={"vision": "frozen", "connector": "full", "language": "lora"},
              lora={"r": 4, "alpha": 8, "dropout": 0.0}, merge=True),
    ]))
    run = tmp_path / "run"
    train_recipe(recipe, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["stage"] == "rl" and "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for row in steps:
        assert {"sample_reward", "greedy_reward", "caption_length", "lr"} <= row.keys()
        assert row["sample_reward"] >= 0 and 0 < row["caption_length"] <= 32
    assert any("val_cider" in r for r in rows if r["stage"] == "rl")
    assert (run / "final/config.json").exists() and (run / "stages/1-rl/adapter").exists()
    assert VLM(run / "final", device="cpu").caption(_images(shapes_data, 1), options=DecodeOptions(max_new_tokens=5))


def _unreadable_captions(tmp_path, shapes_data, n: int = 4) -> str:
    """A training file of `n` caption records whose images are all unreadable."""
    rows = []
    for i, record in enumerate(read_records(shapes_data / CAPTIONS)[:n]):
        (tmp_path / f"{i}.png").write_bytes(b"not an image")
        rows.append({"id": f"r{i}", "image": str(tmp_path / f"{i}.png"),
                     "conversations": [{"from": "human", "value": "<image>\nDescribe the image briefly."},
                                       {"from": "gpt", "value": record.references[0]}]})
    (tmp_path / "broken.json").write_text(json.dumps(rows))
    return str(tmp_path / "broken.json")


@pytest.mark.parametrize("kind", [
    {"type": "scst", "scst_samples": 2, "scst_max_new_tokens": 4, "best_metric": "cider"},
    {"train": {"vision": "full", "connector": "full", "language": "full"}},  # no feature cache: images read as it steps
])
def test_a_stage_whose_images_all_fail_stops_instead_of_training_on_nothing(tmp_path, shapes_data, kind):
    """Every image unreadable, the stage one epoch long: it ran to its end and exit 0 with a "trained" model (an SCST
    stage logging zero rewards and stepping the optimizer on no gradient), as the check of a whole epoch with nothing
    usable came only after the stage's last step had returned; it stops with the skips it met, before the last
    step's checkpoint (which --resume would take for the stage done)."""
    data = {"train": [_unreadable_captions(tmp_path, shapes_data)], "val": ["val/caption_short_en.json"]}
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", template="plain", data=data, max_steps=None, epochs=1,
                                                          batch_size=2, **kind)]))
    with pytest.raises(DataError, match=r"stage s: an epoch of the training data gave no usable example \(4 "
                                        r"skipped: unreadable image x4"):
        train_recipe(recipe, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run/stages/0-s/checkpoints").iterdir()] == ["step-00000001"]  # halfway


def _captioned(tmp_path, shapes_data, captions: list[str]) -> str:
    """A training file of a caption record per caption, each of another shapes image."""
    images = sorted((shapes_data / "images").glob("*.png"))
    rows = [{"id": f"r{i}", "image": str(image), "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": caption}]}
        for i, (image, caption) in enumerate(zip(images, captions))]
    (tmp_path / "captions.json").write_text(json.dumps(rows))
    return str(tmp_path / "captions.json")


def _rl(data: str, **kw) -> dict:
    """An SCST stage on `data`, not validated (its captions would take longest)."""
    return stage("rl", type="scst", template="plain", data={"train": [data]}, max_steps=2, batch_size=1,
                 scst_samples=2, scst_max_new_tokens=4, **kw)


def test_a_cider_reward_on_one_image_is_refused_before_any_stage_trains(tmp_path, shapes_data, capsys):
    """CIDEr-D's document frequencies over one training image give every n-gram the idf log(1/1) = 0: the stage
    trained on rewards that were all 0 (exit 0). Refused by verbo train before its first stage trains."""
    from verbovision.cli import main

    data = _captioned(tmp_path, shapes_data, ["a large orange square and a large red triangle"])
    raw = tiny_recipe(shapes_data, [stage("ce", max_steps=2, template="plain"), _rl(data)])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error == ("verbo: error: stage rl: scst_reward cider takes CIDEr-D's document frequencies from the "
                     "training references, and with 1 image every n-gram's idf, log(1/1), is 0: every caption would "
                     "be rewarded 0; train on 2 or more images with different references, or reward bleu only")
    assert not (tmp_path / "run").exists(), "nothing trained"
    raw["stages"][1]["scst_reward"] = {"bleu": 1.0}  # BLEU needs no other image
    train_recipe(parse_recipe(raw), tmp_path / "run")


def test_references_the_same_once_tokenized_are_refused_when_the_stage_starts(tmp_path, shapes_data):
    """Raw references that differ pass the check before training; tokenized (lower case, no punctuation), every
    n-gram is in both images' references and each idf log(2/2) = 0: the reward's own frequencies refuse them."""
    data = _captioned(tmp_path, shapes_data, ["A red square.", "a red square"])
    with pytest.raises(DataError, match=r"stage rl: .* with the same n-grams in all 2 images every n-gram's idf, "
                                        r"log\(2/2\), is 0"):
        train_recipe(parse_recipe(tiny_recipe(shapes_data, [_rl(data)])), tmp_path / "run")
    # Two images whose references differ: the reward is not 0 for every caption.
    reward = Reward([["a red square"], ["a blue circle"]], {"cider": 1.0})
    assert not reward.cider.scores_nothing() and reward(["a red square"], [["a red square"]])[0] > 0


@pytest.mark.parametrize("change, message", [
    ({"scst_baseline": "best"}, "scst_baseline"),
    ({"scst_baseline": "mean", "scst_samples": 1}, "scst_samples"),
    ({"scst_reward": {"meteor": 1.0}}, "scst_reward.meteor"),
    ({"scst_reward": {"cider": 0.0}}, "scst_reward"),
    ({"scst_top_p": 1.5}, "scst_top_p"),
    ({"best_metric": "val_loss"}, "best_metric"),
    ({"type": "ppo"}, "type"),
])
def test_bad_scst_settings_are_refused(shapes_data, change, message):
    settings = {"type": "scst", "best_metric": "cider", **change}
    with pytest.raises(ConfigError, match=message):
        parse_recipe(tiny_recipe(shapes_data, [stage("rl", **settings)]))
