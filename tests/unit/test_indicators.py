"""Every indicator, as the Scorer computes it, against an independent float64 reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

from monitor import INDICATORS, Scorer
from monitor.errors import ModelError
from monitor.indicators import kernels
from tests.unit.indicator_models import (
    convolutional_head_cnn,
    gated_head_cnn,
    no_batchnorm_cnn,
    perturb_batchnorm,
    reference_indicators,
    reference_odin,
    small_cnn,
)

RGB_MEAN = (0.49, 0.48, 0.45)
RGB_STD = (0.25, 0.24, 0.26)
GREY_MEAN = (0.286,)
GREY_STD = (0.353,)

BATCHNORM_NAMES = {"DMS", "DMS-AOS", "DSS", "DSS-EXT"}
LATENT_NAMES = {"NORM", "NORM+", "ANG", "ANG++", "PROJ", "ACT", "ACT+"}
ALWAYS = {"MP", "H", "T1000", "IN-DMS", "IN-DMS-AOS", "IN-DSS", "IN-DSS-EXT", "1C-Sum"}


@pytest.fixture(params=["compiled-kernels", "torch-operations"], autouse=True)
def computation(request):
    """Every test here runs on both CPU paths: the compiled kernels and plain torch operations
    (what CUDA runs). The reference tests also run on CUDA where there is one, with TF32 off:
    its 10-bit mantissa would move the logits themselves by about 1e-3."""
    kernels.use_kernels(request.param == "compiled-kernels")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield request.param
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    kernels.use_kernels(None)


def _images(shape, seed=0):
    # Not uniform noise: a smooth ramp plus noise, so channel statistics differ per sample.
    generator = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w) * torch.rand((n, c, 1, 1), generator=generator)
    return (0.6 * ramp + 0.4 * torch.rand(shape, generator=generator)).clamp(0, 1)


def _resnet18():
    torch.manual_seed(10)
    return perturb_batchnorm(torchvision.models.resnet18(num_classes=10), seed=10)


def _densenet121():
    torch.manual_seed(11)
    return perturb_batchnorm(torchvision.models.densenet121(num_classes=10), seed=11)


CASES = {
    # name: (builder, mean, std, input [N, C, H, W], head, expected indicator set)
    "resnet18": (_resnet18, RGB_MEAN, RGB_STD, (4, 3, 32, 32), None,
                 ALWAYS | LATENT_NAMES | BATCHNORM_NAMES),
    "densenet121": (_densenet121, RGB_MEAN, RGB_STD, (4, 3, 32, 32), None,
                    ALWAYS | LATENT_NAMES | BATCHNORM_NAMES),
    "small-cnn": (small_cnn, GREY_MEAN, GREY_STD, (4, 1, 28, 28), None,
                  ALWAYS | LATENT_NAMES | BATCHNORM_NAMES),
    "no-batchnorm": (no_batchnorm_cnn, RGB_MEAN, RGB_STD, (4, 3, 16, 16), None,
                     ALWAYS | LATENT_NAMES),
    "named-head": (gated_head_cnn, RGB_MEAN, RGB_STD, (4, 3, 16, 16), "classifier",
                   ALWAYS | LATENT_NAMES | BATCHNORM_NAMES),
    "no-linear": (convolutional_head_cnn, RGB_MEAN, RGB_STD, (4, 3, 16, 16), None,
                  ALWAYS | BATCHNORM_NAMES),
}


def _calibrated_scorer(model, mean, std, shape, head, **options):
    scorer = Scorer(model, mean=mean, std=std, head=head, input_shape=shape[1:], **options)
    scorer.calibrate(n=8, batch_size=8, progress=False)
    return scorer


@pytest.mark.parametrize("case", list(CASES))
def test_every_indicator_matches_the_float64_reference(case, torch_device):
    builder, mean, std, shape, head, expected = CASES[case]
    model = builder()
    x = _images(shape)
    reference, reference_logits = reference_indicators(model, x, mean, std, head=head)

    scorer = _calibrated_scorer(model.to(torch_device), mean, std, shape, head)
    assert scorer.device.type == torch_device.type
    batch = scorer.score_batch(x)
    scores = batch.indicators

    assert set(scores) == expected
    assert tuple(scores) == tuple(name for name in INDICATORS if name in expected)
    assert scorer.available == tuple(scores)
    np.testing.assert_array_equal(batch.predicted.numpy(), reference_logits.argmax(axis=1))
    np.testing.assert_allclose(batch.logits.double().numpy(), reference_logits, rtol=1e-6, atol=1e-6)

    for name in expected - {"1C-Sum"}:
        value = scores[name]
        assert value.shape == (shape[0],) and value.dtype == torch.float64, name
        assert torch.isfinite(value).all(), name
        if name.endswith("DSS-EXT"):
            # An indicator of counts: exact except for channels sitting on the chi2 cut.
            slack = reference[name + " borderline"] + 1e-12
            assert np.all(np.abs(value.numpy() - reference[name]) <= slack), name
        else:
            np.testing.assert_allclose(value.numpy(), reference[name], rtol=2e-5, atol=1e-7,
                                       err_msg=name)
    assert torch.isfinite(scores["1C-Sum"]).all()


def test_the_batchnorm_indicators_are_not_trivial_on_the_reference_models():
    # Guards the reference test against vacuous agreement (all zeros, all ones).
    builder, mean, std, shape, head, _ = CASES["resnet18"]
    reference, _ = reference_indicators(builder(), _images(shape), mean, std)
    for name in ("DMS", "DMS-AOS", "DSS", "IN-DMS", "IN-DSS"):
        assert np.all(reference[name] > 1e-3), name
    assert np.all((reference["DSS-EXT"] > 0) & (reference["DSS-EXT"] < 1))
    assert np.ptp(reference["T1000"]) > 1e-7 and np.ptp(reference["MP"]) > 1e-4


def test_the_default_head_is_the_last_linear_and_a_mismatch_names_the_fix():
    model = gated_head_cnn()  # last Linear 'gate' has 16 outputs, the logits have 5
    scorer = Scorer(model, mean=RGB_MEAN, std=RGB_STD, input_shape=(3, 16, 16))
    assert scorer.head_name == "gate"
    with pytest.raises(ModelError, match="head="):
        scorer.calibrate(n=4, progress=False)


@pytest.mark.parametrize("case", ["small-cnn", "resnet18"])
def test_odin_matches_the_float64_reference(case, torch_device):
    builder, mean, std, shape, head, _ = CASES[case]
    model = builder()
    model64 = copy.deepcopy(model).double()
    x = _images(shape, seed=5)
    expected = reference_odin(model64, x, mean, std, temperature=1000.0, epsilon=8e-4)

    scorer = _calibrated_scorer(model.to(torch_device), mean, std, shape, head, odin=True)
    scores = scorer.score(x)
    assert "ODIN" in scorer.available and "ODIN" in scores
    # The perturbation must move the score, or the comparison below proves nothing.
    assert np.all(np.abs(expected - scores["T1000"].numpy()) > 2e-8)
    np.testing.assert_allclose(scores["ODIN"].numpy(), expected, rtol=0, atol=2e-9)


def test_odin_settings_are_used():
    builder, mean, std, shape, head, _ = CASES["small-cnn"]
    model = builder()
    model64 = copy.deepcopy(model).double()
    x = _images(shape, seed=6)
    expected = reference_odin(model64, x, mean, std, temperature=10.0, epsilon=0.01)
    scorer = _calibrated_scorer(model, mean, std, shape, head, odin=True,
                                odin_temperature=10.0, odin_epsilon=0.01)
    np.testing.assert_allclose(scorer.score(x)["ODIN"].numpy(), expected, rtol=0, atol=1e-6)

    # eps = 0 and T = 1000: no perturbation, ODIN is T1000 exactly.
    unperturbed = _calibrated_scorer(model, mean, std, shape, head, odin=True, odin_epsilon=0.0)
    scores = unperturbed.score(x)
    torch.testing.assert_close(scores["ODIN"], scores["T1000"], rtol=0, atol=0)


def test_odin_leaves_the_main_pass_and_the_model_untouched():
    builder, mean, std, shape, head, _ = CASES["small-cnn"]
    model = builder()
    state_before = {name: value.clone() for name, value in model.state_dict().items()}
    x = _images(shape, seed=7)
    with_odin = _calibrated_scorer(model, mean, std, shape, head, odin=True)
    first = with_odin.score(x)
    with_odin.close()
    without_odin = _calibrated_scorer(model, mean, std, shape, head, odin=False)
    second = without_odin.score(x)

    assert "ODIN" not in second and "ODIN" not in without_odin.available
    for name in second:
        if name != "1C-Sum":
            torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state_before[name], rtol=0, atol=0, msg=name)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_zero_latent_and_no_positive_weight_follow_the_documented_convention():
    model = no_batchnorm_cnn()
    with torch.no_grad():
        model[0].bias.fill_(-1e3)  # every ReLU output is 0, so u = 0
    scorer = _calibrated_scorer(model, RGB_MEAN, RGB_STD, (2, 3, 16, 16), None)
    scores = scorer.score(_images((2, 3, 16, 16)))
    for name in scores:
        assert torch.isfinite(scores[name]).all(), name
    expected = {"NORM": 0.0, "NORM+": 0.0, "ANG": 1.0, "ANG++": 1.0, "PROJ": 0.0, "ACT": 0.0, "ACT+": 0.0}
    for name, value in expected.items():
        assert scores[name].tolist() == [value, value], name

    model = no_batchnorm_cnn()
    with torch.no_grad():
        model[-1].weight.copy_(-model[-1].weight.abs())  # P is empty for every class
    scorer = Scorer(model, mean=RGB_MEAN, std=RGB_STD, input_shape=(3, 16, 16))
    scores = scorer.score_batch(_images((2, 3, 16, 16))).indicators
    assert scores["NORM+"].tolist() == [0.0, 0.0]
    assert scores["ACT+"].tolist() == [0.0, 0.0]
    assert scores["ANG++"].tolist() == [1.0, 1.0]
    assert torch.isfinite(scores["1C-Sum"]).all()


def test_scores_are_batch_independent():
    # One forward for the batch must equal scoring each sample alone (eval-mode batch-norm).
    builder, mean, std, shape, head, _ = CASES["small-cnn"]
    scorer = _calibrated_scorer(builder(), mean, std, shape, head)
    x = _images(shape, seed=8)
    together = scorer.score(x)
    alone = [scorer.score(x[i : i + 1]) for i in range(shape[0])]
    for name in together:
        np.testing.assert_allclose(
            together[name].numpy(), [a[name].item() for a in alone], rtol=1e-5, atol=1e-7,
            err_msg=name,
        )


def test_scoring_inside_inference_mode_or_no_grad_gives_the_same_scores_odin_included():
    # Services often wrap model calls in inference_mode(); ODIN still needs its gradient.
    builder, mean, std, shape, head, _ = CASES["small-cnn"]
    scorer = _calibrated_scorer(builder(), mean, std, shape, head, odin=True)
    x = _images(shape, seed=9)
    plain = scorer.score(x)
    with torch.inference_mode():
        inside_inference = scorer.score(x)
    with torch.no_grad():
        inside_no_grad = scorer.score(x)
    for name in plain:
        torch.testing.assert_close(inside_inference[name], plain[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(inside_no_grad[name], plain[name], rtol=0, atol=0, msg=name)


def test_a_batchnorm_without_running_statistics_is_left_out_with_a_warning(caplog):
    model = small_cnn()
    model[1] = torch.nn.BatchNorm2d(8, track_running_stats=False).eval()
    with caplog.at_level("WARNING", logger="monitor.indicators.probe"):
        scorer = _calibrated_scorer(model, GREY_MEAN, GREY_STD, (2, 1, 28, 28), None)
    assert "'1' keeps no running statistics" in caplog.text
    assert scorer.batchnorm_layers == ("5", "8")
    scores = scorer.score(_images((2, 1, 28, 28)))
    assert BATCHNORM_NAMES <= set(scores)
    assert all(torch.isfinite(value).all() for value in scores.values())


@pytest.mark.parametrize("ratio", [100.0, 1000.0])
def test_spread_indicators_hold_on_channels_whose_mean_dwarfs_their_spread(ratio, torch_device):
    # A nearly dead channel: a large constant offset before batch-norm, absorbed by its running
    # mean, so the model's outputs do not change. E[z^2] - E[z]^2 in float32 used to lose such a
    # channel's spatial variance; the moments are now float64 sums (CPU) or Welford (CUDA).
    builder, mean, std, shape, head, _ = CASES["small-cnn"]
    model = builder()
    x = _images(shape, seed=12)
    with torch.no_grad():
        spread = model[0]((x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1))
        offset = ratio * spread.std(dim=(2, 3)).mean(dim=0)
        model[0].bias += offset
        model[1].running_mean += offset
    reference, _ = reference_indicators(model, x, mean, std)
    scores = _calibrated_scorer(model.to(torch_device), mean, std, shape, head).score(x)
    for name in ("DSS", "DMS", "DMS-AOS"):
        np.testing.assert_allclose(scores[name].numpy(), reference[name], rtol=1e-4, err_msg=name)
    slack = reference["DSS-EXT borderline"] + 1e-12
    assert np.all(np.abs(scores["DSS-EXT"].numpy() - reference["DSS-EXT"]) <= slack)
