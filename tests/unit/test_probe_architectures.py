"""The probe finds its way through common torchvision architectures (random weights).

Each must give every indicator, ODIN included, finite and of shape [N], on the device the
model lives on (CUDA when present) with the same code.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from monitor import INDICATORS, Scorer

ARCHITECTURES = {
    # name: head the probe must find
    "resnet50": "fc",
    "wide_resnet50_2": "fc",
    "densenet121": "classifier",
    "vgg11_bn": "classifier.6",
    "mobilenet_v3_small": "classifier.3",
    "efficientnet_b0": "classifier.1",
}
BATCH, SIZE = 2, 64


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_indicator_is_finite_on_the_architecture(architecture, torch_device):
    torch.manual_seed(0)
    model = getattr(torchvision.models, architecture)(num_classes=10).to(torch_device)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    scorer = Scorer(
        model, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), odin=True,
        input_shape=(3, SIZE, SIZE),
    )
    assert scorer.device.type == torch_device.type
    assert scorer.head_name == ARCHITECTURES[architecture]
    assert len(scorer.batchnorm_layers) == batchnorms > 0
    scorer.calibrate(n=2, progress=False)

    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    batch = scorer.score_batch(images)
    assert tuple(batch.indicators) == INDICATORS
    for name, values in batch.indicators.items():
        assert values.shape == (BATCH,), name
        assert values.device.type == "cpu" and values.dtype == torch.float64, name
        assert torch.isfinite(values).all(), name
    assert batch.predicted.shape == (BATCH,) and batch.logits.shape == (BATCH, 10)
