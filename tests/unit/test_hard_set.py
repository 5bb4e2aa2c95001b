"""The "Hard natural" OOD set is hard in the sense the evaluation needs: gross pixel statistics
cannot separate it from Fashion-MNIST.

The IN- indicators (which see each image's mean and spread only) are scored by the real
Scorer on the bundled demo model, against the same indicators on the unmatched photo crops,
which they separate easily: the contrast shows the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from monitor import Scorer
from monitor.classifiers import load_classifier
from monitor.evaluation import datasets, protocol

N = 600
IN_INDICATORS = ("IN-DMS", "IN-DMS-AOS", "IN-DSS", "IN-DSS-EXT")


@pytest.fixture(scope="module")
def sets():
    return {
        "id": datasets.fashion_mnist_test(N, seed=3),
        "hard": datasets.hard_natural(N, seed=4),
        "photos": datasets.photo_crops(N, seed=4),
    }


@pytest.fixture(scope="module")
def in_scores(sets):
    loaded = load_classifier("demo", device="cpu")
    pre = loaded.preprocessing
    scorer = Scorer(loaded.model, mean=pre.mean, std=pre.std, input_shape=pre.input_shape)
    scorer.calibrate(n=64, progress=False)
    return {
        name: protocol.score_images(scorer.score, datasets.to_model_input(s.images, pre.input_shape), progress=False)
        for name, s in sets.items()
    }


def _auroc(in_scores, ood: str, indicator: str) -> float:
    return protocol.detection_metrics(in_scores["id"][indicator], in_scores[ood][indicator])["auroc"]


def test_in_indicators_are_near_chance_on_the_hard_set_and_not_on_plain_photo_crops(in_scores):
    hard = {name: _auroc(in_scores, "hard", name) for name in IN_INDICATORS}
    photos = {name: _auroc(in_scores, "photos", name) for name in IN_INDICATORS}
    # With 600 + 600 samples, the auROC of an uninformative score has a standard error of
    # about 1.7 points: 44 to 56 is chance level.
    for name, value in hard.items():
        assert 44.0 < value < 56.0, f"{name} separates the hard set from Fashion-MNIST: auROC {value:.1f}"
    # The same indicators find the unmatched crops easily: their spread is far from clothing's.
    assert max(abs(v - 50.0) for v in photos.values()) > 30.0, photos


def test_hard_images_carry_fashion_mnist_pixel_values_and_per_pixel_statistics(sets):
    fashion, hard, photos = (sets[k].images for k in ("id", "hard", "photos"))
    # Every hard image has the sorted pixel values of some Fashion-MNIST training image.
    train, _ = datasets.fashion_mnist.load("train")
    train_sorted = {row.tobytes() for row in np.sort(train.reshape(len(train), -1), axis=1)}
    hard_sorted = np.sort(np.round(hard * 255).astype(np.uint8).reshape(len(hard), -1), axis=1)
    assert all(row.tobytes() in train_sorted for row in hard_sorted)
    # Histogram: the per-image mean and spread follow Fashion-MNIST's (two-sample KS distance small).
    from scipy.stats import ks_2samp

    for statistic in (lambda x: x.mean(axis=(1, 2)), lambda x: x.std(axis=(1, 2))):
        assert ks_2samp(statistic(hard), statistic(fashion)).statistic < 0.1
        assert ks_2samp(statistic(photos), statistic(fashion)).statistic > 0.3
    # Per-pixel mean and spread over the set: close to Fashion-MNIST's, much closer than plain crops.
    def gap(images, reduce):
        return float(np.abs(reduce(images, axis=0) - reduce(fashion, axis=0)).mean())

    for reduce in (np.mean, np.std):
        assert gap(hard, reduce) < 0.06
        assert gap(hard, reduce) < 0.5 * gap(photos, reduce)


def test_matching_gives_each_image_its_donor_values_and_keeps_its_structure():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 1, 28, dtype=np.float32), (28, 1))  # bright on the right
    images = np.stack([ramp, ramp[:, ::-1]])
    donors = rng.random((2, 28, 28)).astype(np.float32)
    flat_layout = np.zeros((28, 28))
    matched = datasets.match_statistics(images, donors, flat_layout, rng)
    for image, donor in zip(matched, donors):
        np.testing.assert_array_equal(np.sort(image.ravel()), np.sort(donor.ravel()))
    # With a flat layout the brightness order is the image's own: the right half stays brighter.
    assert matched[0][:, 14:].mean() > matched[0][:, :14].mean() + 0.3
    assert matched[1][:, :14].mean() > matched[1][:, 14:].mean() + 0.3
    # The layout pulls bright values towards where it is bright.
    centre = np.zeros((28, 28))
    centre[7:21, 7:21] = 1.0
    pulled = datasets.match_statistics(images, donors, centre, rng, weight=3.0)
    assert pulled[:, 7:21, 7:21].mean() > matched[:, 7:21, 7:21].mean() + 0.1
