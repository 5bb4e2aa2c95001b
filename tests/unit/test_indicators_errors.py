"""Bad input, bad models and bad arguments get a clear error naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from monitor import Scorer
from monitor.errors import ConfigError, InputError, ModelError
from tests.unit.indicator_models import GatedHeadCNN, no_batchnorm_cnn, small_cnn

MEAN, STD = (0.286,), (0.353,)


@pytest.fixture(scope="module")
def scorer():
    scorer = Scorer(small_cnn(), mean=MEAN, std=STD, input_shape=(1, 28, 28))
    scorer.calibrate(n=4, progress=False)
    return scorer


def _valid(n=2):
    return torch.rand(n, 1, 28, 28)


@pytest.mark.parametrize("images, message", [
    (torch.rand(1, 28, 28), r"4-D tensor \[N, C, H, W\]; got shape \(1, 28, 28\)"),
    (torch.rand(2, 3, 28, 28), "3 channels; the model takes 1"),
    (torch.rand(2, 1, 32, 32), "32x32; the model takes 28x28"),
    ((torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), "dtype torch.uint8"),
    (torch.rand(0, 1, 28, 28), "empty"),
    ([[0.5]], "must be a torch.Tensor"),
])
def test_malformed_images_are_refused(scorer, images, message):
    with pytest.raises(InputError, match=message):
        scorer.score(images)


def test_non_finite_pixels_name_the_samples(scorer):
    images = _valid(4)
    images[2, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match=r"NaN or infinite pixels \(samples 2\)"):
        scorer.score(images)
    images = _valid(4)
    images[1, 0, 0, 0] = float("inf")
    images[3, 0, 0, 0] = -float("inf")
    with pytest.raises(InputError, match=r"samples 1, 3"):
        scorer.score(images)


def test_pixels_outside_the_unit_interval_are_refused_beyond_a_small_tolerance(scorer):
    images = _valid(3)
    images[1] *= 255  # forgot to divide by 255
    with pytest.raises(InputError, match=r"\[0, 1\].*samples 1\)"):
        scorer.score(images)
    images = _valid(3)
    images[0, 0, 0, 0] = -0.5  # already normalised
    with pytest.raises(InputError, match=r"samples 0\)"):
        scorer.score(images)
    images = _valid(3)
    images[0, 0, 0, 0] = 1.0005  # resampling overshoot is tolerated
    images[0, 0, 0, 1] = -0.0005
    assert scorer.score(images)["MP"].shape == (3,)


def test_numpy_arrays_are_accepted(scorer):
    scores = scorer.score(np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32))
    assert scores["ANG++"].shape == (2,)


def test_the_input_shape_is_fixed_by_the_first_batch_when_not_given():
    scorer = Scorer(no_batchnorm_cnn(), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ConfigError, match="input_shape"):
        scorer.fingerprint()
    with pytest.raises(ConfigError, match="input shape is unknown"):
        scorer.calibrate(n=4, progress=False)
    scorer.score(torch.rand(1, 3, 8, 8))  # calibrates lazily at the shape of this batch
    assert scorer.input_shape == (3, 8, 8)
    with pytest.raises(InputError, match="9x8; the model takes 8x8"):
        scorer.score(torch.rand(1, 3, 9, 8))


class _FeatureMapModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x)


class _TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)), x


class _OneLogit(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 1)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _HeadNotCalled(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 3, 28)
        self.unused = nn.Linear(5, 3)

    def forward(self, x):
        return self.body(x).flatten(1)


@pytest.mark.parametrize("model, message", [
    (_FeatureMapModel(), r"logits \[N, K\] = \[2, K\]; it returned \(2, 4, 26, 26\)"),
    (_TupleModel(), r"logits \[N, K\].*it returned tuple"),
    (_OneLogit(), "K >= 2"),
    (_HeadNotCalled(), "was not called during the forward pass"),
])
def test_models_that_cannot_be_probed_raise_model_error(model, message):
    scorer = Scorer(model, mean=MEAN, std=STD, input_shape=(1, 28, 28))
    with pytest.raises(ModelError, match=message):
        scorer.calibrate(n=2, progress=False)


@pytest.mark.parametrize("model, head, message", [
    (nn.Identity(), None, "no parameters or buffers"),
    ("resnet18", None, "must be a torch.nn.Module"),
    (GatedHeadCNN(), "fc", "no module of that name; its nn.Linear modules are: classifier, gate"),
    (GatedHeadCNN(), "features.0", "is a Conv2d, not an nn.Linear"),
])
def test_unusable_models_and_heads_are_refused_at_construction(model, head, message):
    with pytest.raises(ModelError, match=message):
        Scorer(model, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), head=head)


@pytest.mark.parametrize("options, message", [
    (dict(mean=(0.5, 0.5), std=(0.2,)), "mean has 2 values but std has 1"),
    (dict(mean=(0.5,), std=(0.0,)), "must be > 0"),
    (dict(mean=("a",), std=(0.2,)), "mean = "),
    (dict(mean=(float("nan"),), std=(0.2,)), "finite"),
    (dict(mean=MEAN, std=STD, input_shape=(3, 28, 28)), "3 channels but mean/std have 1"),
    (dict(mean=MEAN, std=STD, input_shape=(28, 28)), r"expected \(C, H, W\)"),
    (dict(mean=MEAN, std=STD, input_shape=(1, 1, 1)), "at least 2 pixels"),
    (dict(mean=MEAN, std=STD, odin_temperature=0.0), "odin_temperature"),
    (dict(mean=MEAN, std=STD, odin_epsilon=-1e-3), "odin_epsilon"),
])
def test_bad_arguments_name_the_argument(options, message):
    with pytest.raises(ConfigError, match=message):
        Scorer(small_cnn(), **options)


@pytest.mark.parametrize("arguments, message", [
    (dict(n=1), "n = 1"),
    (dict(n=8, batch_size=0), "batch_size = 0"),
    (dict(n=8, seed="x"), "seed = 'x'"),
])
def test_bad_calibration_arguments_are_refused(scorer, arguments, message):
    with pytest.raises(InputError, match=message):
        scorer.calibrate(progress=False, **arguments)
