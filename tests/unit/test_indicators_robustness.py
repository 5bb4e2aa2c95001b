"""Models that misbehave in ways a probe could silently miss: in-place changes after the head,
submodules left in training mode, non-finite logits, and calibration identity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monitor import Scorer
from monitor.errors import InputError
from monitor.indicators.summary import fingerprint
from tests.unit.indicator_models import perturb_batchnorm, small_cnn

MEAN, STD = (0.3,), (0.4,)


class AuxiliaryAfterHead(nn.Module):
    """Logits from the head, then an auxiliary branch that rectifies u in place."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
        self.fc = nn.Linear(8, 3)
        self.aux = nn.Linear(8, 2)

    def forward(self, x):
        u = self.features(x)
        logits = self.fc(u)
        self.aux(torch.relu_(u))
        return logits


def test_the_latent_is_the_head_input_even_when_the_model_changes_it_in_place_afterwards():
    torch.manual_seed(0)
    model = AuxiliaryAfterHead().eval()
    x = torch.rand(4, 1, 4, 4)
    with torch.no_grad():
        u = model.features((x - MEAN[0]) / STD[0])
    scores = Scorer(model, MEAN, STD, head="fc").score_batch(x).indicators

    assert torch.allclose(scores["NORM"], -u.double().norm(dim=1), atol=1e-5)
    assert (u < 0).any(), "the case needs negative coordinates for the in-place ReLU to matter"


def test_a_submodule_left_in_training_mode_is_scored_in_eval_and_its_statistics_stay():
    torch.manual_seed(1)
    model = perturb_batchnorm(small_cnn())
    scorer = Scorer(model, MEAN, STD, input_shape=(1, 12, 12))
    x = torch.rand(5, 1, 12, 12)
    expected = scorer.score_batch(x).indicators["DMS"]
    batchnorm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = batchnorm.running_var.clone()

    batchnorm.train()
    again = scorer.score_batch(x).indicators["DMS"]

    assert torch.equal(batchnorm.running_var, before)
    assert torch.allclose(again, expected)
    assert not any(module.training for module in model.modules())


def test_non_finite_logits_are_an_error_not_an_in_distribution_score():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            logits = self.fc(x.flatten(1))
            return torch.where(torch.arange(x.shape[0])[:, None] == 1, torch.nan, logits)

    scorer = Scorer(Broken(), MEAN, STD, input_shape=(1, 2, 2))
    with pytest.raises(InputError, match=r"non-finite logits .*\[1\]"):
        scorer.score_batch(torch.rand(3, 1, 2, 2))


def test_the_calibration_identity_includes_each_batchnorm_eps():
    model = small_cnn()
    first = fingerprint(model, MEAN, STD, (1, 12, 12), None)
    next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eps = 0.1
    assert fingerprint(model, MEAN, STD, (1, 12, 12), None) != first
