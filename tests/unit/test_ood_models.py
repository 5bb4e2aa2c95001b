"""The evaluation's trained models: the training script (tiny run, resumable) and the
committed weights (they load, and reach the accuracy their description states)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor import fashion_mnist
from monitor.evaluation import datasets, models
from monitor.evaluation.ood_bench import accuracy

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "train_ood_models.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_ood_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_architecture_has_batch_norm_and_a_linear_head_on_a_non_negative_latent():
    for spec in models.model_specs(seeds=(0,))[:3]:
        model = spec.build(num_classes=10).eval()
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), spec.name
        captured = {}
        model.fc.register_forward_pre_hook(lambda module, args: captured.setdefault("u", args[0]))
        logits = model(torch.randn(4, 1, 28, 28))
        assert logits.shape == (4, 10)
        assert (captured["u"] >= 0).all(), f"{spec.name}: the latent vector must be post-ReLU"


def test_training_script_writes_a_described_model_and_skips_it_on_a_rerun(tmp_path, capsys):
    train = _script()
    args = ["--models", "resnet-holdout-seed0", "--out-dir", str(tmp_path), "--train-images", "256",
            "--epochs", "1", "--log-every", "1"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "[1/1] resnet-holdout-seed0: epoch 1/1 step 1/2" in out and "done, test accuracy" in out
    description = json.loads((tmp_path / "resnet-holdout-seed0.json").read_text())
    assert description["held_out_classes"] == list(fashion_mnist.HOLDOUT_CLASSES)
    assert description["architecture"]["kwargs"]["num_classes"] == 8
    assert description["recipe"]["train_images"] == 256
    assert not list(tmp_path.glob("*.part"))
    loaded = models.load(models.ModelSpec("resnet", 0, fashion_mnist.HOLDOUT_CLASSES), tmp_path)
    assert loaded.preprocessing.class_names == tuple(fashion_mnist.CLASS_NAMES[c] for c in description["trained_classes"])

    assert train.main(args) == 0
    assert "already trained, skipped" in capsys.readouterr().out
    assert train.main(["--models", "vgg-seed0", "--out-dir", str(tmp_path)]) == 2


@pytest.mark.parametrize("spec", models.model_specs(), ids=lambda s: s.name)  # all twelve
def test_committed_model_reaches_its_stated_accuracy(spec):
    loaded = models.load(spec, device="cpu")
    details = loaded.details
    assert details["script"] == f"deploy/train_ood_models.py --models {spec.name}"
    classes = details["trained_classes"]
    sample = datasets.fashion_mnist_test(1000, seed=5, classes=classes)
    measured = accuracy(loaded, sample, {c: i for i, c in enumerate(classes)})
    # 1,000 images: the binomial standard error of an 85 % accuracy is 1.1 points.
    assert abs(measured - details["test_accuracy"]) < 0.04, (measured, details["test_accuracy"])
    assert measured > 0.7
