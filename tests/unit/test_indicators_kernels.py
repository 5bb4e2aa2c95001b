"""The compiled CPU kernels against float64 torch, and the paths that choose them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from monitor import Scorer
from monitor.indicators import kernels
from monitor.indicators.batchnorm import reduce_activation



@pytest.fixture(autouse=True)
def compiled_kernels():
    """Numba is a hard dependency: kernels that cannot be built here are a failure, never a skip. Each
    test starts with them on, whatever MONITOR_FUSED_KERNELS says, and the switch is restored after."""
    assert kernels._compiled() is not None, "the compiled kernels cannot be built here (see the log: Numba)"
    kernels.use_kernels(True)
    yield
    kernels.use_kernels(None)


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 4, 1, 1), (1, 2, 224, 224)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_moments_are_float64_mean_and_variance_in_one_read(shape, dtype):
    # A mean 50 / spread 3 ratio where float32 sums of squares would lose the variance.
    z = (torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 50).to(dtype)
    mean, variance = kernels.channel_moments(z)
    reference = z.double()
    assert mean.dtype == variance.dtype == torch.float64
    torch.testing.assert_close(mean, reference.mean(dim=(2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(variance, reference.var(dim=(2, 3), correction=0), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_every_reduction_path_gives_mean_and_variance(device):
    z = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 + 7
    z[0, 0] = 3.0  # a constant channel: variance exactly 0, never negative
    reference_mean, reference_variance = z.mean(dim=(2, 3)), z.var(dim=(2, 3), correction=0)
    for variant in (z, z.to(memory_format=torch.channels_last)):
        for dtype in (torch.float32, torch.float64):
            mean, variance = reduce_activation(variant.to(device, dtype))
            torch.testing.assert_close(mean.cpu().double(), reference_mean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(variance.cpu().double(), reference_variance, rtol=1e-4, atol=1e-5)
            assert variance[0, 0] == 0 or variance[0, 0] < 1e-10


def test_buffers_are_reused_per_key_and_replaced_when_the_shape_changes():
    buffers = kernels.MomentBuffers()
    first = buffers.get("a", 2, 3)
    assert buffers.get("a", 2, 3)[2] is first[2]
    assert buffers.get("a", 4, 3)[2] is not first[2]
    assert buffers.get("b", 2, 3)[2] is not first[2]


def test_the_arena_holds_a_pass_once_its_keys_are_known_and_not_a_stale_one():
    buffers = kernels.MomentBuffers()
    z1, z2 = torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)

    def one_pass(first, second):
        t1, _ = reduce_activation(first, buffers, "one")
        t2, _ = reduce_activation(second, buffers, "two")
        return buffers.whole(["one", "two"], [t1, t2]), torch.cat([t1, t2], dim=1).clone()

    assert one_pass(z1, z2)[0] is None  # first pass: keys learnt, arena laid out
    whole, expected = one_pass(z1 * 2, z2 * 2)  # second: written in place, already side by side
    assert whole is not None
    np.testing.assert_array_equal(whole[0], expected.numpy())
    # A new batch size leaves the arena: the caller concatenates, nothing stale comes back.
    assert one_pass(torch.rand(3, 3, 4, 4), torch.rand(3, 5, 2, 2))[0] is None


def test_a_large_activation_is_split_between_threads_with_the_same_result():
    threads = torch.get_num_threads()
    large = torch.randn(6, 8, 128, 128, generator=torch.Generator().manual_seed(5)) + 20
    assert large.numel() >= kernels.PARALLEL_REDUCTION_ELEMENTS
    try:
        torch.set_num_threads(1)
        alone = [t.clone() for t in kernels.channel_moments(large)]
        torch.set_num_threads(4)  # more threads than this machine's cores is fine: slices of samples
        split = kernels.channel_moments(large)
    finally:
        torch.set_num_threads(threads)
    for one, other in zip(alone, split):
        torch.testing.assert_close(one, other, rtol=0, atol=0)


def test_other_layouts_and_half_precision_go_through_the_kernel():
    z = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 4
    expected = z.mean(dim=(2, 3)), z.var(dim=(2, 3), correction=0)
    assert not kernels.channel_moments_applicable(z.to(memory_format=torch.channels_last))
    for variant in (z.to(memory_format=torch.channels_last), z.half()):
        mean, variance = reduce_activation(variant)
        assert mean.dtype == torch.float64  # the kernel's float64 output, not a torch reduction's
        tolerance = 1e-3 if variant.dtype == torch.half else 1e-10
        torch.testing.assert_close(mean, expected[0], rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(variance, expected[1], rtol=10 * tolerance, atol=10 * tolerance)


class SharedBatchNorm(nn.Module):
    """One batch-norm layer applied twice, as weight-shared blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv1(x)))
        x = torch.relu(self.norm(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def _shared_model():
    torch.manual_seed(3)
    model = SharedBatchNorm()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_both_paths_agree_on_every_indicator_with_a_layer_applied_twice():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    results = {}
    for on in (True, False):
        kernels.use_kernels(on)
        try:
            scorer = Scorer(_shared_model(), mean=(0.5,) * 3, std=(0.25,) * 3, input_shape=(3, 8, 8))
            scorer.calibrate(n=8, batch_size=8, progress=False)
            scorer.score(x)  # a first pass lays the arena out; the second writes into it
            results[on] = scorer.score_batch(x)
        finally:
            kernels.use_kernels(None)
    compiled, plain = results[True], results[False]
    assert torch.equal(compiled.predicted, plain.predicted)
    assert tuple(compiled.indicators) == tuple(plain.indicators)
    for name, value in compiled.indicators.items():
        np.testing.assert_allclose(value.numpy(), plain.indicators[name].numpy(), rtol=2e-5, atol=1e-6,
                                   err_msg=name)


def test_switching_the_kernels_off_by_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENVIRONMENT_SWITCH, "0")
    kernels.use_kernels(None)
    try:
        assert not kernels.enabled()
        assert not kernels.channel_moments_applicable(torch.rand(2, 3, 4, 4))
    finally:
        monkeypatch.delenv(kernels.ENVIRONMENT_SWITCH)
        kernels.use_kernels(None)
    assert kernels.enabled()


def test_without_usable_numba_the_scorer_falls_back_to_torch_with_a_warning(monkeypatch, caplog):
    def broken(numba):
        raise RuntimeError("cannot cache function: no locator available")

    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    expected = Scorer(_shared_model(), mean=(0.5,) * 3, std=(0.25,) * 3, input_shape=(3, 8, 8))
    expected.calibrate(n=8, batch_size=8, progress=False)
    expected_scores = expected.score(x)

    monkeypatch.setattr(kernels, "_define_kernels", broken)
    kernels._compiled.cache_clear()
    try:
        assert not kernels.enabled()
        scorer = Scorer(_shared_model(), mean=(0.5,) * 3, std=(0.25,) * 3, input_shape=(3, 8, 8),
                        calibration=expected.calibration)
        scores = scorer.score(x)
    finally:
        monkeypatch.undo()
        kernels._compiled.cache_clear()
    assert "Numba cannot be used" in caplog.text
    for name, value in scores.items():
        np.testing.assert_allclose(value.numpy(), expected_scores[name].numpy(), rtol=2e-5, atol=1e-6,
                                   err_msg=name)
    assert kernels.enabled()
