"""`ood-monitor bench ood`: the offline OOD sets, the paper's protocol and the report files.

The protocol is checked on scores whose answer is known; the data sets on their shape and
content; the whole command once, small, on the bundled demo models (real data, real Scorer).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monitor.cli import main as cli_main
from monitor.errors import InputError
from monitor.evaluation import datasets, protocol
from monitor.names import SUMMARY

# --- protocol on known scores -------------------------------------------------------------


def test_detection_metrics_of_perfect_reversed_and_undefined_indicators():
    id_values, ood_values = np.arange(100.0), np.arange(100.0, 200.0)
    perfect = protocol.detection_metrics(id_values, ood_values)
    assert perfect["auroc"] == pytest.approx(100.0)
    assert perfect["fpr95"] == pytest.approx(0.0)
    assert perfect["detection_error"] == pytest.approx(0.0)
    assert protocol.detection_metrics(ood_values, id_values)["auroc"] == pytest.approx(0.0)

    # A NaN indicator value is undefined: it counts as most suspicious, and is reported.
    ood_with_nan = ood_values.copy()
    ood_with_nan[:5] = np.nan
    result = protocol.detection_metrics(id_values, ood_with_nan)
    assert result["auroc"] == pytest.approx(100.0)
    assert result["non_finite"] == 5


def test_ranks_put_best_auroc_first_and_share_ties():
    ranks = protocol.rank_methods({"A": 90.0, "B": 99.0, "C": 90.0, "D": 50.0})
    assert ranks == {"B": 1.0, "A": 2.5, "C": 2.5, "D": 4.0}


def _separable(rng, n, shift):
    return rng.normal(0.0, 1.0, n), rng.normal(shift, 1.0, n)


def test_evaluate_set_ranks_indicators_the_summary_and_the_supervised_baseline():
    rng = np.random.default_rng(0)
    n = 400
    # Two indicators, each informative for half of the OOD samples: a linear model on both
    # (the supervised baseline) separates better than either one alone.
    id_scores = {"MP": rng.normal(0, 1, n), "ANG": rng.normal(0, 1, n), "NORM": rng.normal(0, 1, n)}
    ood_mp = np.r_[rng.normal(4, 1, n // 2), rng.normal(0, 1, n // 2)]
    ood_ang = np.r_[rng.normal(0, 1, n // 2), rng.normal(4, 1, n // 2)]
    ood_scores = {"MP": ood_mp, "ANG": ood_ang, "NORM": rng.normal(0, 1, n)}
    id_scores[SUMMARY] = id_scores["MP"] + id_scores["ANG"]
    ood_scores[SUMMARY] = ood_scores["MP"] + ood_scores["ANG"]

    result = protocol.evaluate_set(id_scores, ood_scores, "mixed", seed=0)

    assert list(result.metrics) == ["MP", "NORM", "ANG", protocol.SUPERVISED, SUMMARY]
    assert 45 < result.metrics["NORM"]["auroc"] < 55  # uninformative: chance level
    assert result.metrics[protocol.SUPERVISED]["auroc"] > max(result.metrics[m]["auroc"] for m in ("MP", "ANG"))
    assert result.metrics[protocol.SUPERVISED]["test_id"] == n // 2
    assert result.ranks[protocol.SUPERVISED] == 1.0
    assert result.ranks["NORM"] == 5.0
    # Among the individual indicators only, the sum of the two informative ones comes first.
    assert protocol.summary_rank_among_indicators([result])["average"] == 1.0
    assert protocol.average_ranks([result, result]) == result.ranks


def test_mixed_stream_has_the_asked_share_drawn_evenly_with_small_sets_topped_up():
    rng = np.random.default_rng(1)
    id_scores = {"MP": rng.random(900)}
    sets = {"big": {"MP": rng.random(500) + 10}, "small": {"MP": rng.random(20) + 20}, "mid": {"MP": rng.random(300) + 30}}
    stream, is_ood, counts = protocol.mixed_stream(id_scores, sets, 0.10, seed=0)
    assert is_ood.sum() == 100 and len(is_ood) == 1000
    assert counts == {"big": 40, "small": 20, "mid": 40}
    assert not np.all(is_ood[-100:]), "the stream must be shuffled"
    values = stream["MP"][is_ood]
    assert len(np.unique(values)) == 100, "OOD samples are drawn without replacement"
    with pytest.raises(InputError, match="ood_share"):
        protocol.mixed_stream(id_scores, sets, 1.5)


def test_stream_thresholds_report_precision_recall_and_unfittable_indicators():
    rng = np.random.default_rng(2)
    id_scores = {"MP": rng.normal(0, 1, 900), "H": np.zeros(900)}
    ood = {"far": {"MP": rng.normal(20, 1, 100), "H": np.zeros(100)}}
    stream, is_ood, _ = protocol.mixed_stream(id_scores, ood, 0.10, seed=0)
    result = protocol.stream_thresholds(stream, is_ood)
    for method in ("proportion", "two_means"):
        assert result["MP"][method]["precision"] == 1.0
        assert result["MP"][method]["recall"] == 1.0
        assert result["MP"][method]["flagged"] == 100
    # A constant indicator cannot be split by two-means: reported, not a crash.
    assert "error" in result["H"]["two_means"]


# --- data sets --------------------------------------------------------------------------------


def test_every_offline_set_loads_as_grey_28x28_in_unit_range_and_is_reproducible():
    for name, loader in datasets.FAR_OOD.items():
        image_set = loader(30, 7)
        assert image_set.name == name
        assert image_set.images.shape == (min(30, len(image_set)), 28, 28)
        assert image_set.images.dtype == np.float32
        assert 0.0 <= image_set.images.min() and image_set.images.max() <= 1.0
        assert image_set.images.std() > 0.01, f"{name}: images are blank"
        np.testing.assert_array_equal(image_set.images, loader(30, 7).images)
    assert len(datasets.lfw_faces(None)) == 100  # faces only, not the subset's non-face patches
    assert len(datasets.mnist_digits(None)) == 5000
    noise = datasets.gaussian_noise(2000, 0).images
    assert noise.mean() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(InputError, match="unknown OOD set"):
        datasets.load_far_ood(["MNIST", "CIFAR"], 10)


def test_fashion_mnist_split_by_class_and_fit_to_the_model_input():
    held_out = datasets.fashion_mnist_test(50, classes=[5, 9])
    assert set(held_out.extra["labels"]) <= {5, 9} and len(held_out) == 50
    tensor = datasets.to_model_input(held_out.images, (3, 32, 32))
    assert tensor.shape == (50, 3, 32, 32)
    assert torch.equal(tensor[:, 0], tensor[:, 2])
    same = datasets.to_model_input(held_out.images, (1, 28, 28))
    assert torch.equal(same[:, 0], torch.from_numpy(held_out.images))


def test_score_images_batches_a_score_function_and_keeps_order():
    def score(batch):
        return {"MEAN": batch.mean(dim=(1, 2, 3)), SUMMARY: -batch.amax(dim=(1, 2, 3))}

    images = torch.rand(23, 1, 28, 28)
    scores = protocol.score_images(score, images, batch_size=5, progress=False)
    np.testing.assert_allclose(scores["MEAN"], images.mean(dim=(1, 2, 3)).double().numpy(), rtol=1e-6)
    assert scores[SUMMARY].shape == (23,)
    with pytest.raises(InputError, match="batch_size"):
        protocol.score_images(score, images, batch_size=0)


# --- the command, small, on the bundled models --------------------------------------------------


def test_bench_ood_command_writes_json_markdown_and_plots(tmp_path, capsys):
    code = cli_main(["bench", "ood", "--quick", "--limit", "60", "--output-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    result = json.loads((tmp_path / "ood.json").read_text())

    names = [r["name"] for r in result["results"]]
    assert names == list(datasets.FAR_OOD)
    for entry in result["results"]:
        assert entry["size"] == min(60, {"LFW faces": 100}.get(entry["name"], 60))
        for method in ("ODIN", "ANG++", "DSS-EXT", SUMMARY, "supervised"):
            assert 0.0 <= entry["metrics"][method]["auroc"] <= 100.0
        assert sorted(entry["ranks"].values())[0] >= 1.0
    assert len(result["average_rank"]) == 21  # 19 indicators, supervised, 1C-Sum
    # 1C-Sum is standardised on uniform noise: noise is where it must be far from Fashion-MNIST.
    uniform = result["results"][names.index("Uniform")]
    assert uniform["metrics"][SUMMARY]["auroc"] > 90.0
    assert result["model"]["test_accuracy_on_id_sample"] > 0.8
    assert result["near_ood"]["held_out_names"] and result["near_ood"]["result"]["size"] == 60
    assert result["stream"]["ood_share"] == pytest.approx(0.10, abs=0.01)
    assert "precision" in result["stream"]["thresholds"][SUMMARY]["two_means"]
    assert result["machine"]["torch"] == torch.__version__
    assert isinstance(result["goals"]["summary_rank_among_indicators"]["met"], bool)

    markdown = (tmp_path / "ood.md").read_text()
    assert f"`ood-monitor bench ood --quick --limit 60 --output-dir {tmp_path}`" in markdown
    assert "| **1C-Sum** |" in markdown and "near-OOD" in markdown
    for png in ("ood_auroc_heatmap.png", "ood_average_rank.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "average rank" in capsys.readouterr().out
    compared = json.loads((tmp_path / "class_thresholds.json").read_text())
    assert {"global", "per_class"} <= set(compared["indicators"][SUMMARY]["proportion"])
    assert "| 1C-Sum | proportion | global |" in (tmp_path / "class_thresholds.md").read_text()
    assert (tmp_path / "class_thresholds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_ood_refuses_bad_arguments_with_a_clear_message(tmp_path, capsys):
    assert cli_main(["bench", "ood", "--limit", "2", "--output-dir", str(tmp_path)]) == 2
    assert "--limit" in capsys.readouterr().err
    assert cli_main(["bench", "ood", "--sets", "CIFAR", "--output-dir", str(tmp_path), "--no-progress"]) == 2
    assert "unknown OOD set" in capsys.readouterr().err
