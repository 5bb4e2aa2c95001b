"""The committed demo classifier: it loads, it is small, and it reaches the accuracy its JSON states."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monitor import fashion_mnist
from monitor.classifiers import ASSETS_DIR, BUNDLED, load_classifier
from monitor.imaging import decode_file, stack_images
from monitor.offline import bundled_samples

CHECKED_IMAGES = 2000
# Binomial standard error on 2000 images at ~91 % is 0.64 %: 3 of them.
TOLERANCE = 0.02

needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason=f"Fashion-MNIST is not under {fashion_mnist.FASHION_MNIST_DIR}: "
    "apt-get install -y dataset-fashion-mnist (deploy/local/bootstrap.sh --test does)",
)


def present_bundled_models() -> list[str]:
    return [spec for spec, stem in BUNDLED.items() if (ASSETS_DIR / f"{stem}.pt").is_file()]


@pytest.mark.parametrize("spec", present_bundled_models())
def test_bundled_weights_are_small_float32_with_a_description(spec):
    stem = ASSETS_DIR / BUNDLED[spec]
    assert stem.with_suffix(".pt").stat().st_size < 5 * 1024 * 1024
    description = json.loads(stem.with_suffix(".json").read_text())
    for key in ("architecture", "preprocessing", "test_accuracy", "epochs", "seed", "torch_version", "trained_on"):
        assert key in description, key
    state = torch.load(stem.with_suffix(".pt"), map_location="cpu", weights_only=True)
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)


@needs_fashion_mnist
@pytest.mark.parametrize("spec", present_bundled_models())
def test_bundled_model_reaches_its_stated_accuracy(spec):
    loaded = load_classifier(spec, device="cpu")
    stated = loaded.details["test_accuracy"]
    images, labels = fashion_mnist.load("test")
    trained = loaded.details.get("trained_classes", list(range(10)))
    keep = np.isin(labels, trained)
    images, labels = images[keep][:CHECKED_IMAGES], labels[keep][:CHECKED_IMAGES]
    remap = {original: index for index, original in enumerate(trained)}
    targets = torch.tensor([remap[int(label)] for label in labels])
    prep = loaded.preprocessing
    pixels = torch.from_numpy(images).float().div(255).unsqueeze(1)
    normalised = (pixels - torch.tensor(prep.mean).view(1, -1, 1, 1)) / torch.tensor(prep.std).view(1, -1, 1, 1)
    with torch.no_grad():
        predicted = torch.cat([loaded.model(chunk).argmax(1) for chunk in normalised.split(500)])
    accuracy = (predicted == targets).float().mean().item()
    assert stated >= 0.88, f"{spec}: the committed model states only {stated:.3f}"
    assert accuracy >= stated - TOLERANCE, f"{spec}: {accuracy:.4f} on {len(targets)} test images, states {stated:.4f}"


def test_bundled_in_distribution_samples_are_recognised():
    """The id samples are real Fashion-MNIST images: decoded from their PNGs, the demo model
    names the class the manifest records for most of them."""
    loaded = load_classifier("demo", device="cpu")
    samples = [s for s in bundled_samples() if s.kind == "id"]
    assert len(samples) == 20
    batch = stack_images([decode_file(s.path, loaded.preprocessing) for s in samples])
    prep = loaded.preprocessing
    normalised = (batch - prep.mean[0]) / prep.std[0]
    with torch.no_grad():
        predicted = loaded.model(normalised).argmax(1).tolist()
    expected = [int(s.detail.split("class ")[1].split()[0]) for s in samples]
    correct = sum(p == e for p, e in zip(predicted, expected))
    assert correct >= 16, f"only {correct} of 20 in-distribution samples classified as their manifest says"


def test_sample_manifest_lists_every_bundled_image():
    samples = bundled_samples()
    on_disk = {p.name for p in (ASSETS_DIR / "samples").glob("*.png")}
    assert {s.path.name for s in samples} == on_disk
    assert {s.kind for s in samples} == {"id", "ood"}
    assert {s.source for s in samples if s.kind == "ood"} >= {
        "sklearn-digits", "uniform-noise", "gaussian-noise", "skimage-brick", "skimage-grass", "skimage-gravel",
    }
