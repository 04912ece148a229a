"""Train and eval modes (trainable.py): a frozen batch norm never trains, and `evaluating` gives a model back in the
mode it was in."""

from __future__ import annotations

import pytest
from torch import nn

from verbovision.model.trainable import evaluating, train_mode


def model_with_a_frozen_batch_norm() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    model[2].requires_grad_(False)
    return model


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_gives_the_model_back_in_its_mode(training):
    model = model_with_a_frozen_batch_norm()
    train_mode(model, training)
    with evaluating(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [training, training, training, False]


def test_evaluating_gives_the_mode_back_when_the_block_fails():
    model = model_with_a_frozen_batch_norm()
    train_mode(model)
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("a failed validation")
    assert model.training and model[1].training and not model[2].training
