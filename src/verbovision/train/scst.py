"""Self-critical sequence training (Rennie et al. 2017): a recipe stage (`type: scst`) that trains on caption rewards.

For each image the model samples K captions and one greedy caption (eval mode, no gradients). Each caption is rewarded
against the image's references (CIDEr-D with document frequencies fixed from all the stage's training references, or
a weighted mix with BLEU-4); a sample's advantage is its reward minus a baseline (the greedy caption's reward, or the
mean of the other samples). The loss is the REINFORCE objective on the sampled tokens,

    loss = -sum_{i,t} advantage_i * log p(token_it) / number of sampled tokens,

over each sample's tokens up to and including its EOS, with an optional entropy bonus and KL penalty to the model as
it was when the stage started. The stage loop itself (resume, validation, checkpoints, saving) is train.py's."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config.schema import Recipe, Stage
from ..data.batching import Collator
from ..data.encoding import Encoded
from ..data.images import load_images
from ..data.records import SkipLog, skip_entry
from ..data.sources import source_records
from ..data.streams import is_stream
from ..errors import DataError
from ..evaluate.bleu import bleu
from ..evaluate.cider import CiderD
from ..evaluate.ptb import ptb_tokenize
from ..families import check_consumed
from ..infer.greedy import eos_token_ids
from ..model.trainable import evaluating
from .state import StageSetup, TrainState, compute_precision, optimizer_step


@dataclass
class ScstExample:
    """One training image: its prompt, ready for generation, and its references."""

    prompt: Encoded
    references: list[str]
    """PTB-tokenized, as the reward metrics take them."""


class Reward:
    """Per-caption reward: a weighted sum of CIDEr-D (fixed document frequencies) and BLEU-4."""

    def __init__(self, corpus_references: list[list[str]], weights: dict[str, float]):
        """`corpus_references`: the tokenized references of every training image, for CIDEr-D's document frequencies."""
        self.weights = {name: w for name, w in weights.items() if w}
        self.cider = CiderD(corpus_references) if "cider" in self.weights else None

    def __call__(self, captions: list[str], references: list[list[str]]) -> np.ndarray:
        """Rewards of raw captions against tokenized references, one per caption."""
        hypotheses = ptb_tokenize(captions)
        total = np.zeros(len(captions))
        if self.cider is not None:
            total += self.weights["cider"] * self.cider.score(hypotheses, references)
        if "bleu" in self.weights:
            total += self.weights["bleu"] * np.array([orders[3] for orders in bleu(hypotheses, references)[1]])
        return total


def advantages(sample_rewards: torch.Tensor, greedy_rewards: torch.Tensor, baseline: str) -> torch.Tensor:
    """Reward minus baseline for each sample, flattened image-major. sample_rewards [B, K], greedy_rewards [B]."""
    if baseline == "greedy":
        base = greedy_rewards[:, None]  # [B, 1]
    else:  # the mean of the other K-1 samples: independent of the sample itself, so the gradient stays unbiased
        k = sample_rewards.shape[1]
        base = (sample_rewards.sum(1, keepdim=True) - sample_rewards) / (k - 1)  # [B, K]
    return (sample_rewards - base).flatten()  # [B*K]


def reply_mask(tokens: torch.Tensor, eos_ids: frozenset[int]) -> torch.Tensor:
    """1 for generated tokens up to and including each row's first EOS, 0 after (padding). tokens [N, L]."""
    is_eos = torch.isin(tokens, torch.tensor(sorted(eos_ids), device=tokens.device)).long()  # [N, L]
    eos_before = is_eos.cumsum(1) - is_eos  # [N, L] EOS tokens strictly before each position
    return (eos_before == 0).float()


def policy_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, advantage: torch.Tensor,
                n_tokens: int | None = None, entropy_weight: float = 0.0, reference_logits: torch.Tensor | None = None,
                kl_weight: float = 0.0) -> torch.Tensor:
    """The SCST loss of sampled replies.

    logits [N, T, V]: the model's logits over the prompt and reply, or only their last L+1 positions (T >= L+1);
    tokens [N, L] the sampled reply tokens, mask [N, L] which of them count (`reply_mask`), advantage [N].
    Position t of a reply is predicted by the logits one position earlier, so only the logits at the last L+1
    positions but one are read: the prompt's logits get no gradient. The sum is normalised by `n_tokens` (default:
    the counted tokens of this call; give the total of all micro-batches of a step to accumulate).
    """
    length = tokens.shape[1]
    log_probs = F.log_softmax(logits[:, -length - 1 : -1].float(), dim=-1)  # [N, L, V]
    taken = log_probs.gather(-1, tokens[..., None]).squeeze(-1)  # [N, L]
    n_tokens = n_tokens or max(1, int(mask.sum()))
    loss = -(advantage[:, None] * taken * mask).sum() / n_tokens
    if entropy_weight:
        entropy = -(log_probs.exp() * log_probs).sum(-1)  # [N, L]
        loss = loss - entropy_weight * (entropy * mask).sum() / n_tokens
    if kl_weight:
        reference = F.log_softmax(reference_logits[:, -length - 1 : -1].float(), dim=-1)  # [N, L, V]
        kl = (log_probs.exp() * (log_probs - reference)).sum(-1)  # [N, L] KL(policy || reference) per position
        loss = loss + kl_weight * (kl * mask).sum() / n_tokens
    return loss


def continuation_inputs(prompts: dict, tokens: torch.Tensor, mask: torch.Tensor) -> dict:
    """Model inputs of left-padded prompts followed by their replies tokens [N, L] (mask [N, L] from reply_mask)."""
    inputs = dict(prompts)
    inputs["input_ids"] = torch.cat([prompts["input_ids"], tokens], 1)  # [N, P+L]
    inputs["attention_mask"] = torch.cat([prompts["attention_mask"], mask.long()], 1)  # [N, P+L]
    # Positions as generation counted them: a left-padded prompt starts at position 0 on its first real token.
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(1) - 1).clamp(min=0)  # [N, P+L]
    return inputs


@dataclass
class Rollout:
    """One micro-batch's samples, scored, ready for the policy-gradient forward pass."""

    inputs: dict
    """Model inputs of prompt + sampled reply, each prompt repeated K times: input_ids [B*K, P+L], ..."""
    tokens: torch.Tensor
    """[B*K, L] sampled reply tokens."""
    mask: torch.Tensor
    """[B*K, L] reply_mask of the tokens."""
    advantage: torch.Tensor
    """[B*K]"""
    sample_reward: float
    greedy_reward: float


class ScstSteps:
    """The optimizer step of an SCST stage, over groups of micro-batches of `ScstExample`s (a train.StepRunner)."""

    def __init__(self, recipe: Recipe, stage: Stage, setup: StageSetup):
        self.stage, self.setup, self.device = stage, setup, setup.device
        self.model, self.encoder = setup.model, setup.collator.encoder
        self.family = self.encoder.family
        self.prompts = Collator(self.encoder, pad_left=True)  # generation continues the prompts: pad them on the left
        self.pad_id = self.encoder.tokenizer.pad_token_id
        self.eos_ids = eos_token_ids(self.model, setup.processor)
        self.sources = scst_sources(recipe, stage, self.encoder)
        corpus = [e.references for examples, _ in self.sources for e in examples]
        self.reward = Reward(corpus, stage.scst_reward)  # document frequencies built once, from every training image
        if self.reward.cider is not None and self.reward.cider.scores_nothing():
            raise same_references(stage, len(corpus))
        self.reference = None
        if stage.scst_kl:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)

    @staticmethod
    def prepare(group: list[list[ScstExample]]) -> list[list[ScstExample]]:
        """The group as it is: its images are read as it steps, between sampling and scoring."""
        return group

    def step(self, group: list[list[ScstExample]], state: TrainState) -> dict:
        """Sample every micro-batch first, so that the loss is normalised by all the step's sampled tokens. Nothing
        when no image of the group loads: no optimizer step (as an SFT step with every example skipped), so a stage
        whose images all fail stops with an error instead of "training" on zero rewards."""
        with compute_precision(self.setup):
            rollouts = [r for r in (self.rollout(examples, state) for examples in group) if r is not None]
        if not rollouts:
            return {}
        n_tokens = max(1, int(sum(r.mask.sum() for r in rollouts)))
        total = 0.0
        for rollout in rollouts:
            with compute_precision(self.setup):
                loss = self.loss(rollout, n_tokens)
            loss.backward()
            total += loss.item()
        grad_norm = optimizer_step(self.setup, self.stage)
        n_samples = max(1, sum(len(r.mask) for r in rollouts))
        return {"loss": total, "grad_norm": grad_norm, "sample_reward": _mean([r.sample_reward for r in rollouts]),
                "greedy_reward": _mean([r.greedy_reward for r in rollouts]),
                "caption_length": sum(float(r.mask.sum()) for r in rollouts) / n_samples}

    def rollout(self, examples: list[ScstExample], state: TrainState) -> Rollout | None:
        """Sample K captions and a greedy one per image and score them; None when no image of the batch loads."""
        examples, images = self._loaded(examples, state)
        if not examples:
            return None
        k = self.stage.scst_samples
        sampling = self._inputs(examples, images, k)
        greedy = self._inputs(examples, images, 1)  # the greedy baseline; logged with the mean baseline too
        with evaluating(self.model), torch.no_grad():
            sampled = self._generate(sampling, do_sample=True, temperature=self.stage.scst_temperature,
                                     top_k=self.stage.scst_top_k or 0, top_p=self.stage.scst_top_p or 1.0)
            greedy_tokens = self._generate(greedy, do_sample=False)
        mask = reply_mask(sampled, self.eos_ids)  # [B*K, L]
        captions = self._texts(sampled, mask) + self._texts(greedy_tokens, reply_mask(greedy_tokens, self.eos_ids))
        references = [e.references for e in examples]
        rewards = self.reward(captions, [refs for refs in references for _ in range(k)] + references)
        rewards = torch.tensor(rewards, dtype=torch.float32)  # [B*K + B]
        sample_rewards = rewards[: len(examples) * k].view(len(examples), k)  # [B, K]
        greedy_rewards = rewards[len(examples) * k :]  # [B]
        advantage = advantages(sample_rewards, greedy_rewards, self.stage.scst_baseline).to(self.device)
        return Rollout(continuation_inputs(sampling, sampled, mask), sampled, mask, advantage,
                       float(sample_rewards.mean()), float(greedy_rewards.mean()))

    def loss(self, rollout: Rollout, n_tokens: int) -> torch.Tensor:
        logits = self._reply_logits(self.model, rollout)  # [B*K, L+1, V]
        reference_logits = None
        if self.reference is not None:
            with torch.no_grad():
                reference_logits = self._reply_logits(self.reference, rollout)  # [B*K, L+1, V]
        return policy_loss(logits, rollout.tokens, rollout.mask, rollout.advantage, n_tokens,
                           self.stage.scst_entropy, reference_logits, self.stage.scst_kl)

    def _reply_logits(self, model, rollout: Rollout) -> torch.Tensor:
        """The logits of the last L+1 positions, where the reply is predicted."""
        keep = rollout.tokens.shape[1] + 1
        inputs = self.family.model_inputs(rollout.inputs)
        check_consumed(model, inputs)
        if self.family.takes_logits_to_keep:
            # Only the reply's logits are needed: the full [N, P+L, V] tensor would not fit for a real vocabulary.
            return model(**inputs, logits_to_keep=keep).logits  # [B*K, L+1, V]
        return model(**inputs).logits[:, -keep:]  # GIT and encoder-decoders take no logits_to_keep

    def _loaded(self, examples: list[ScstExample], state: TrainState) -> tuple[list[ScstExample], list[list]]:
        """The examples whose images load, with their images; the others are recorded as skipped, as SFT does."""
        kept, images, failed = load_images(examples, lambda example: example.prompt.images)
        for example, error in failed:
            state.record_skip(*skip_entry(example.prompt.record_id, error))
        return kept, images

    def _inputs(self, examples: list[ScstExample], images: list[list], repeat: int) -> dict:
        """Left-padded prompts, each `repeat` times in a row, with their images, on the device."""
        batch = self.prompts.pad([e.prompt for e in examples for _ in range(repeat)])
        batch.pop("labels")
        flat = [image for record_images in images for image in record_images]
        if flat:
            pixels = self.encoder.pixel_inputs(flat)["pixel_values"]  # [n_images, 3, H, W]
            first = np.cumsum([0] + [len(i) for i in images])
            rows = [int(first[i]) + j for i, record_images in enumerate(images) for _ in range(repeat)
                    for j in range(len(record_images))]
            batch["pixel_values"] = pixels[rows]  # [n_images * repeat, 3, H, W]
        return {key: value.to(self.device) for key, value in batch.items()}

    def _generate(self, inputs: dict, **kwargs) -> torch.Tensor:
        """The generated reply tokens [N, L] (the prompt cut off), padded after each row's EOS."""
        # An image token in a reply would ask the loss's forward pass for image features the batch does not have.
        suppress = [] if self.encoder.image_token_id is None else [self.encoder.image_token_id]
        out = self.model.generate(**self.family.model_inputs(inputs), max_new_tokens=self.stage.scst_max_new_tokens,
                                  num_beams=1, pad_token_id=self.pad_id, suppress_tokens=suppress,
                                  **kwargs)  # [N, P+L]
        return out[:, inputs["input_ids"].shape[1] :]

    def _texts(self, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
        decode = self.encoder.tokenizer.decode
        return [decode(row[: int(n)].tolist(), skip_special_tokens=True).strip()
                for row, n in zip(tokens, mask.sum(1))]


def same_references(stage: Stage, images: int) -> DataError:
    """The error of a CIDEr-D reward whose training references give every n-gram an idf of 0 (CiderD.scores_nothing).
    Its document frequencies come from the training set, as in Rennie et al. and ruotianluo/self-critical.pytorch:
    idf over any other corpus would reward something else than the CIDEr-D the stage is validated and reported with."""
    what = "1 image" if images == 1 else f"the same n-grams in all {images} images"
    return DataError(f"stage {stage.name}: scst_reward cider takes CIDEr-D's document frequencies from the training "
                     f"references, and with {what} every n-gram's idf, log({images}/{images}), is 0: every caption "
                     "would be rewarded 0; train on 2 or more images with different references, or reward bleu only")


def check_reward_references(recipe: Recipe, stage: Stage) -> None:
    """Before any stage trains: an SCST stage's cider reward has training images whose references differ (read until
    two do). Streamed sources, and references that differ only until tokenized, are refused when the stage starts."""
    if not stage.scst_reward.get("cider") or any(is_stream(source) for source in stage.data.train):
        return
    seen, images = set(), 0
    for source in stage.data.train:
        for record in source_records(source, Path(recipe.data_root), SkipLog()):
            if record.references:
                images += 1
                seen.add(frozenset(record.references))
                if len(seen) > 1:
                    return
    if images:  # none: scst_sources says so when the stage starts
        raise same_references(stage, images)


def scst_sources(recipe: Recipe, stage: Stage, encoder) -> list[tuple[list[ScstExample], float]]:
    """Each training source's records with references, as (examples, weight), like data.encode_sources.

    Records that cannot be encoded are left out without counting: prepare_stage counted them already, when it
    encoded the same records with their replies.
    """
    sources = []
    for source in stage.data.train:
        examples, references = [], []
        for record in source_records(source, Path(recipe.data_root), SkipLog()):
            if not record.references:
                continue
            try:
                examples.append(encoder.encode(record, for_generation=True))
            except DataError:
                continue
            references.append(record.references)
        tokenized = iter(ptb_tokenize([r for refs in references for r in refs]))  # one call: the tokenizer is batched
        sources.append(([ScstExample(e, [next(tokenized) for _ in refs]) for e, refs in zip(examples, references)],
                        source.weight))
    if not any(examples for examples, _ in sources):
        raise DataError(f"stage {stage.name}: no training records with references to reward captions against")
    return sources


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0
