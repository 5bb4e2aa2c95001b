"""The Scorer brings a batch back from the model's device in one copy (monitor.indicators.scorer.to_host):
on a GPU, one synchronisation per batch. The seam is checked on the CPU: to_host is called once per
batch (for a CPU model it has nothing to copy), no result tensor is read back in any other way before
it, and the one buffer it uses on a GPU gives every value back exactly."""

from __future__ import annotations

import pytest
import torch

from monitor import Scorer
from monitor.classifiers import DemoResNet
from monitor.errors import InputError
from monitor.indicators import kernels
from monitor.indicators import scorer as scorer_module
from tests.unit.indicator_models import perturb_batchnorm, small_cnn

READ_BACKS = ("item", "tolist", "cpu", "numpy")


def _scorer(model, channels, size, odin):
    model = perturb_batchnorm(model)
    scorer = Scorer(model, mean=(0.5,) * channels, std=(0.25,) * channels, input_shape=(channels, size, size),
                    odin=odin)
    scorer.calibrate(n=16, batch_size=8, progress=False)
    return scorer


@pytest.fixture
def device_path():
    """The torch path of the indicator families (the compiled kernels compute on the host)."""
    kernels.use_kernels(False)
    yield
    kernels.use_kernels(None)


@pytest.mark.parametrize("odin", [False, True])
@pytest.mark.parametrize("name", ["demo", "small"])
def test_one_batch_is_one_copy_to_the_host_and_nothing_else_is_read_back(monkeypatch, device_path, name, odin):
    channels, size = (1, 28) if name == "demo" else (1, 12)
    model = DemoResNet() if name == "demo" else small_cnn(channels=1, classes=4)
    scorer = _scorer(model, channels, size, odin)
    images = torch.rand((6, channels, size, size), generator=torch.Generator().manual_seed(1))

    copies, reads = [], []
    real_to_host = scorer_module.to_host

    def counting_to_host(tensors):
        copies.append(len(tensors))
        return real_to_host(tensors)

    def spy(method):
        original = getattr(torch.Tensor, method)

        def wrapper(self, *args, **kwargs):
            if not copies:  # before the one copy, nothing may come back from the device
                reads.append(method)
            return original(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(scorer_module, "to_host", counting_to_host)
    for method in READ_BACKS:
        monkeypatch.setattr(torch.Tensor, method, spy(method))
    for method in ("__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, spy(method))

    batch = scorer.score_batch(images)
    monkeypatch.undo()
    kernels.use_kernels(False)

    assert len(copies) == 1
    assert reads == []
    assert list(batch.indicators) == list(scorer.available)
    assert batch.predicted.dtype == torch.int64 and batch.predicted.shape == (6,)
    assert batch.logits.shape[0] == 6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64,
                                   torch.bool])
def test_the_one_buffer_returns_every_tensor_exactly(dtype):
    """What to_host does with tensors on a GPU, run here on CPU tensors."""
    generator = torch.Generator().manual_seed(2)
    if dtype == torch.bool:
        tensor = torch.rand((5, 3), generator=generator) > 0.5
    elif dtype == torch.int64:
        tensor = torch.randint(-(2**52), 2**52, (5, 3), generator=generator)
    else:
        tensor = (torch.randn((5, 3), generator=generator) * 1e3).to(dtype)
    other = torch.randn((4,), generator=generator, dtype=torch.float64)
    back, other_back = scorer_module._one_buffer_copy([tensor, other])
    assert back.dtype == tensor.dtype and torch.equal(back, tensor)
    assert torch.equal(other_back, other)


def test_checks_left_on_the_device_still_fail_the_batch_with_their_message(device_path):
    scorer = _scorer(small_cnn(channels=1, classes=4), 1, 12, False)
    images = torch.rand((4, 1, 12, 12), generator=torch.Generator().manual_seed(3))
    images[2, 0, 3, 3] = 1.5
    with pytest.raises(InputError, match=r"found values in \[.*, 1\.5\] \(samples 2\)"):
        scorer.score_batch(images)
    images[2, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match=r"NaN or infinite pixels \(samples 2\)"):
        scorer.score_batch(images)
