"""1C-Sum: its calibration on noise, weights, serialisation, fingerprint and the file cache."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from monitor import Scorer
from monitor.calibration_cache import cache_path, load_or_calibrate
from monitor.errors import InputError, ModelError
from monitor.indicators import Calibration, fingerprint
from tests.unit.indicator_models import no_batchnorm_cnn, small_cnn

MEAN, STD, SHAPE = (0.286,), (0.353,), (1, 28, 28)
MEMBERS = ("MP", "H", "T1000", "NORM", "NORM+", "ANG", "ANG++", "PROJ", "ACT", "ACT+",
           "DMS", "DMS-AOS", "DSS", "DSS-EXT")


def _scorer(model=None, **options):
    return Scorer(model if model is not None else small_cnn(), mean=MEAN, std=STD,
                  input_shape=SHAPE, **options)


def _noise(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(SHAPE, generator=generator) for _ in range(n)])


def test_calibration_is_the_mean_and_std_of_each_member_on_seeded_uniform_noise():
    scorer = _scorer()
    assert scorer.summary_members == MEMBERS  # IN- and ODIN excluded
    calibration = scorer.calibrate(n=24, seed=7, batch_size=10, progress=False)
    assert scorer.calibration is calibration
    assert (calibration.n, calibration.seed) == (24, 7)
    assert calibration.fingerprint == scorer.fingerprint()

    scores = scorer.score(_noise(24, seed=7))
    for name in calibration.members:
        values = scores[name].numpy()
        assert calibration.means[name] == pytest.approx(values.mean(), rel=1e-6, abs=1e-9), name
        assert calibration.stds[name] == pytest.approx(values.std(ddof=1), rel=1e-4), name
    assert set(calibration.members) | set(calibration.dropped) == set(MEMBERS)


def test_calibration_depends_on_seed_and_n_only():
    scorer = _scorer()
    small_batches = scorer.calibrate(n=12, seed=3, batch_size=5, progress=False)
    one_batch = scorer.calibrate(n=12, seed=3, batch_size=64, progress=False)
    other_seed = scorer.calibrate(n=12, seed=4, batch_size=64, progress=False)
    for name in small_batches.members:
        assert one_batch.means[name] == pytest.approx(small_batches.means[name], rel=1e-6, abs=1e-12)
    assert other_seed.means["MP"] != one_batch.means["MP"]


def test_one_c_sum_is_the_weighted_sum_of_standardised_members_of_a_given_calibration():
    scorer = _scorer()
    members = scorer.summary_members
    calibration = Calibration.from_dict({
        "fingerprint": scorer.fingerprint(), "n": 100, "seed": 0,
        "means": {name: 0.1 * i for i, name in enumerate(members[:-1])},
        "stds": {name: 0.5 + i for i, name in enumerate(members[:-1])},
        "dropped": [members[-1]],
    })
    scorer.calibration = calibration
    x = _noise(3, seed=1) * 0.5 + 0.25
    scores = scorer.score(x)
    expected = sum((scores[name].numpy() - 0.1 * i) / (0.5 + i) for i, name in enumerate(members[:-1]))
    np.testing.assert_allclose(scores["1C-Sum"].numpy(), expected, rtol=1e-12)

    scorer.set_summary_weights({"ANG++": 3.0, "MP": 0.0})
    weights = {name: 1.0 for name in members[:-1]} | {"ANG++": 3.0, "MP": 0.0}
    assert scorer.summary_weights == weights | {members[-1]: 1.0}
    scores = scorer.score(x)
    expected = sum(weights[name] * (scores[name].numpy() - 0.1 * i) / (0.5 + i)
                   for i, name in enumerate(members[:-1]))
    np.testing.assert_allclose(scores["1C-Sum"].numpy(), expected, rtol=1e-12)

    scorer.reset_summary_weights()
    assert set(scorer.summary_weights.values()) == {1.0}


@pytest.mark.parametrize("weights, message", [
    ({"IN-DMS": 1.0}, "not a 1C-Sum member"),
    ({"ODIN": 1.0}, "not a 1C-Sum member"),
    ({"BOGUS": 1.0}, "not a 1C-Sum member"),
    ({"ANG": float("nan")}, "finite number"),
    ({"ANG": "2"}, "finite number"),
])
def test_bad_summary_weights_are_refused_with_the_name(weights, message):
    scorer = _scorer()
    with pytest.raises(InputError, match=message):
        scorer.set_summary_weights(weights)


def test_a_member_constant_on_noise_is_dropped_and_logged(caplog):
    model = no_batchnorm_cnn()
    with torch.no_grad():
        model[-1].weight.copy_(-model[-1].weight.abs())  # no positive weight: NORM+, ANG++, ACT+ constant
    scorer = Scorer(model, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), input_shape=(3, 16, 16))
    with caplog.at_level(logging.WARNING, logger="monitor.indicators.scorer"):
        calibration = scorer.calibrate(n=16, progress=False)
    assert calibration.dropped == ("NORM+", "ANG++", "ACT+")
    assert "NORM+, ANG++, ACT+" in caplog.text and "dropped" in caplog.text
    assert not set(calibration.dropped) & set(calibration.members)


def test_lazy_calibration_on_first_score_is_logged(caplog):
    model = no_batchnorm_cnn()
    scorer = Scorer(model, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    assert scorer.calibration is None
    with caplog.at_level(logging.INFO, logger="monitor.indicators.scorer"):
        scores = scorer.score(torch.rand(2, 3, 8, 8))
    assert scorer.input_shape == (3, 8, 8)
    assert scorer.calibration is not None and scorer.calibration.n == 2048
    assert "calibrating now" in caplog.text
    assert torch.isfinite(scores["1C-Sum"]).all()


def test_calibration_round_trips_through_a_dict_and_json():
    scorer = _scorer()
    calibration = scorer.calibrate(n=8, progress=False)
    data = json.loads(json.dumps(calibration.to_dict()))
    assert data["members"] == list(calibration.members)
    assert Calibration.from_dict(data) == calibration


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("means"), "'means' is missing"),
    (lambda d: d["stds"].update(MP=0.0), "must be > 0"),
    (lambda d: (d["means"].update({"IN-DMS": 0.0}), d["stds"].update({"IN-DMS": 1.0})), "not a 1C-Sum member"),
    (lambda d: d.update(n=1), "n = 1"),
    (lambda d: d.update(format=99), "format"),
])
def test_a_broken_calibration_dict_names_the_key(mutate, message):
    data = _scorer().calibrate(n=8, progress=False).to_dict()
    mutate(data)
    with pytest.raises(InputError, match=message):
        Calibration.from_dict(data)


def test_a_calibration_of_another_model_is_refused():
    calibration = _scorer().calibrate(n=8, progress=False)
    other = small_cnn()
    with torch.no_grad():
        other[0].weight.add_(1e-3)
    with pytest.raises(ModelError, match="another model"):
        _scorer(other, calibration=calibration)
    assert _scorer(small_cnn(), calibration=calibration).calibration == calibration


def test_fingerprint_is_a_pure_function_of_weights_and_preprocessing():
    model = small_cnn()
    base = fingerprint(model, MEAN, STD, SHAPE, "10")
    assert base == fingerprint(copy.deepcopy(model), MEAN, STD, SHAPE, "10")
    assert len(base) == 64 and int(base, 16) >= 0
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[1].running_var[0] += 1e-4  # buffers count, not only parameters
    assert fingerprint(changed, MEAN, STD, SHAPE, "10") != base
    assert fingerprint(model, (0.3,), STD, SHAPE, "10") != base
    assert fingerprint(model, MEAN, (0.35,), SHAPE, "10") != base
    assert fingerprint(model, MEAN, STD, (1, 32, 32), "10") != base
    assert fingerprint(model, MEAN, STD, SHAPE, None) != base


class _ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1


def test_the_cache_reuses_a_calibration_after_a_restart(tmp_path):
    model = small_cnn()
    counter = _ForwardCounter(model)
    first = load_or_calibrate(_scorer(model), tmp_path, n=16, progress=False)
    assert counter.calls == 1  # 16 noise images, one batch
    path = cache_path(tmp_path, first.fingerprint, 16, 0)
    assert path.exists()

    restarted = _scorer(model)  # a fresh process would build a fresh scorer
    counter.calls = 0
    second = load_or_calibrate(restarted, tmp_path, n=16, progress=False)
    assert counter.calls == 0
    assert second == first and restarted.calibration == first

    # Another n is another calibration; the first file stays.
    load_or_calibrate(_scorer(model), tmp_path, n=8, progress=False)
    assert counter.calls == 1
    assert len(list(tmp_path.glob("calibration-*.json"))) == 2


def test_a_corrupt_cache_file_is_recomputed_and_replaced(tmp_path, caplog):
    model = small_cnn()
    scorer = _scorer(model)
    path = cache_path(tmp_path, scorer.fingerprint(), 8, 0)
    path.write_text('{"truncated": ')
    with caplog.at_level(logging.WARNING, logger="monitor.calibration_cache"):
        calibration = load_or_calibrate(scorer, tmp_path, n=8, progress=False)
    assert "recomputing" in caplog.text
    assert Calibration.from_dict(json.loads(path.read_text())) == calibration
    assert not list(tmp_path.glob("*.tmp"))


def test_a_changed_model_does_not_reuse_the_cache(tmp_path):
    model = small_cnn()
    load_or_calibrate(_scorer(model), tmp_path, n=8, progress=False)
    with torch.no_grad():
        model[-1].bias.add_(0.5)
    counter = _ForwardCounter(model)
    load_or_calibrate(_scorer(model), tmp_path, n=8, progress=False)
    assert counter.calls == 1
    assert len(list(tmp_path.glob("calibration-*.json"))) == 2
