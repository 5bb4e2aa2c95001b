"""`ood-monitor bench ood`: the offline OOD sets, the paper's protocol and the report files.

The protocol and the tables are checked on scores whose answer is known; the data sets on
their shape and content; the whole command once, small, on the trained models of
monitor/assets/ood_models (real data, real Scorer).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monitor.cli import main as cli_main
from monitor.errors import InputError
from monitor.evaluation import datasets, intervals, protocol, tables
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


def test_halves_split_every_sample_once_and_reproducibly():
    train, test = protocol.halves(11, seed=3)
    assert len(train) == 5 and len(test) == 6
    assert sorted(np.r_[train, test].tolist()) == list(range(11))
    np.testing.assert_array_equal(protocol.halves(11, seed=3)[0], train)
    assert not np.array_equal(protocol.halves(11, seed=4)[0], train)
    with pytest.raises(InputError, match="at least 4"):
        protocol.halves(3, seed=0)


def test_linear_svm_reference_combines_indicators_and_survives_undefined_values():
    rng = np.random.default_rng(0)
    n = 400
    # Two indicators, each informative for half of the OOD samples: a linear model on both
    # separates better than either one alone.
    def draw(ood: bool):
        mp = np.r_[rng.normal(4, 1, n // 2), rng.normal(0, 1, n // 2)] if ood else rng.normal(0, 1, n)
        ang = np.r_[rng.normal(0, 1, n // 2), rng.normal(4, 1, n // 2)] if ood else rng.normal(0, 1, n)
        return {"MP": mp, "ANG": ang, "NORM": rng.normal(0, 1, n)}

    train_id, train_ood, test_id, test_ood = draw(False), draw(True), draw(False), draw(True)
    train_ood["ANG"][:3] = np.nan  # undefined values are clipped, not a crash
    svm = protocol.fit_linear_svm(train_id, train_ood, ["MP", "ANG", "NORM"])
    combined = protocol.detection_metrics(svm(test_id), svm(test_ood))["auroc"]
    alone = max(protocol.detection_metrics(test_id[m], test_ood[m])["auroc"] for m in ("MP", "ANG"))
    assert combined > alone + 5
    assert 45 < protocol.detection_metrics(test_id["NORM"], test_ood["NORM"])["auroc"] < 55


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


# --- tables on scores whose answer is known ------------------------------------------------------


def _set_scores(rng, n, shifts):
    """Every row of the extended table: N(0, 1) on ID, N(shift, 1) on OOD (shift 0 = chance)."""
    rows = tables.EXTENDED_ROWS
    return tables.SetScores(
        id={r: rng.normal(0, 1, n) for r in rows},
        ood={r: rng.normal(shifts.get(r, 0.0), 1, n) for r in rows},
    )


def test_tables_give_means_spreads_intervals_and_ranks_that_match_the_scores():
    rng = np.random.default_rng(0)
    sets = ["A", "B", "Uniform"]
    # 1C-Sum clearly best of the sample-free rows, the supervised reference better still,
    # DSS second on one set only; every other row at chance.
    shifts = {SUMMARY: 2.5, tables.SUPERVISED: 4.0}
    runs = {
        arch: [{s: _set_scores(rng, 300, {**shifts, "DSS": 2.0 if s == "A" else 0.0}) for s in sets} for _ in range(3)]
        for arch in ("one", "two")
    }
    near = {"one": _set_scores(rng, 300, {"ANG": 3.0, tables.SUPERVISED: 5.0})}
    resampled = tables.resample(runs, sets, draws=200, seed=1, near=near)
    paper, extended = tables.compute_table(tables.PAPER, resampled), tables.compute_table(tables.EXTENDED, resampled)

    assert paper["sets"] == ["A", "B"] and extended["sets"] == sets  # no Uniform in the paper's protocol
    assert len(paper["rows"]) == 20 and "IN-DSS-EXT" not in paper["rows"]
    assert len(extended["rows"]) == 21
    entry = paper["architectures"]["one"]["auroc"]["A"][SUMMARY]
    # Mean and spread are those of the per-seed auROCs, each computed directly.
    direct = [intervals.auroc_draws(run["A"].id[SUMMARY], run["A"].ood[SUMMARY])[0] for run in runs["one"]]
    assert entry["per_model"] == pytest.approx(direct)
    assert entry["value"] == pytest.approx(np.mean(direct))
    assert entry["spread"] == pytest.approx(np.std(direct, ddof=1))
    assert entry["low"] < entry["value"] < entry["high"]
    # True auROC of a 2.5-sigma shift: Phi(2.5 / sqrt 2) = 96.1 %, inside the interval.
    assert entry["low"] < 96.1 < entry["high"]
    ranks = paper["pooled"]["average_rank"]
    assert ranks[tables.SUPERVISED] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert ranks[SUMMARY]["value"] == 2.0 and ranks[SUMMARY]["high"] == 2.0
    # DSS: rank 3 on A, a chance-level rank on B; its interval is not a point.
    assert ranks["DSS"]["low"] < ranks["DSS"]["high"]
    goal = tables.goal(paper)
    assert goal["met"] and set(goal["per_architecture"]) == {"one", "two"}
    assert paper["architectures"]["one"]["summary_best_share"] == 1.0
    # The held-out-classes column has its own model: ANG first after the reference.
    assert paper["near_ood"]["one"]["rank"]["ANG"]["value"] == 2.0


def test_goal_is_not_met_when_another_sample_free_row_ranks_better():
    rng = np.random.default_rng(1)
    runs = {"one": [{"A": _set_scores(rng, 200, {"ANG": 3.0, SUMMARY: 1.0})}]}
    table = tables.compute_table(tables.PAPER, tables.resample(runs, ["A"], draws=50))
    goal = tables.goal(table)
    assert not goal["met"] and goal["per_architecture"]["one"]["best_sample_free"] == "ANG"
    assert table["architectures"]["one"]["summary_best_share"] == 0.0
    # One model: no spread to report.
    assert table["architectures"]["one"]["auroc"]["A"]["ANG"]["spread"] is None or np.isnan(
        table["architectures"]["one"]["auroc"]["A"]["ANG"]["spread"]
    )


# --- the command, small, on the trained models ----------------------------------------------------


def test_bench_ood_command_writes_json_markdown_and_plots(tmp_path, capsys):
    # Seed 0 of each architecture and the held-out-classes variants: six models (the tables'
    # aggregation over seeds is checked above on scores with known answers).
    code = cli_main(["bench", "ood", "--quick", "--limit", "60", "--seeds", "0", "--output-dir", str(tmp_path),
                     "--no-progress"])
    assert code == 0
    result = json.loads((tmp_path / "ood.json").read_text())

    assert [s["name"] for s in result["sets"]] == list(datasets.FAR_OOD)
    assert len(result["models"]) == 6 and result["settings"]["draws"] == 100
    for model in result["models"]:
        assert model["accuracy_on_id_sample"] > 0.6, model
    paper, extended = result["tables"]["paper"], result["tables"]["extended"]
    assert len(paper["rows"]) == 20 and "Uniform" not in paper["sets"]
    assert len(extended["rows"]) == 21 and "Uniform" in extended["sets"]
    assert set(paper["architectures"]) == {"resnet", "densenet", "wrn"}
    for table in (paper, extended):
        for arch in table["architectures"].values():
            assert arch["models"] == 1
            for row, rank in arch["average_rank"].items():
                # The point (rank of the mean auROC) may fall just outside its percentile interval.
                assert 1.0 <= rank["low"] <= rank["high"] <= len(table["rows"]), row
                assert 1.0 <= rank["value"] <= len(table["rows"]), row
        for name in table["sets"]:
            cell = table["pooled"]["auroc"][name][SUMMARY]
            assert 0.0 <= cell["low"] <= cell["value"] <= cell["high"] <= 100.0
        assert set(table["near_ood"]) == {"resnet", "densenet", "wrn"}
    # 1C-Sum is standardised on uniform noise: noise is where it must be far from Fashion-MNIST.
    assert extended["pooled"]["auroc"]["Uniform"][SUMMARY]["value"] > 90.0
    assert isinstance(result["goals"]["paper"]["met"], bool)
    assert result["stream"]["ood_share"] == pytest.approx(0.10, abs=0.01)
    assert result["machine"]["torch"] == torch.__version__

    markdown = (tmp_path / "ood.md").read_text()
    assert f"`ood-monitor bench ood --quick --limit 60 --seeds 0 --output-dir {tmp_path}`" in markdown
    assert "| **1C-Sum** |" in markdown and "Held-out classes" in markdown
    for png in ("ood_average_rank.png", "ood_auroc_intervals.png", "ood_auroc_heatmap.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pooled average rank" in capsys.readouterr().out
    compared = json.loads((tmp_path / "class_thresholds.json").read_text())
    assert {"global", "per_class"} <= set(compared["indicators"][SUMMARY]["proportion"])
    assert "| 1C-Sum | proportion | global |" in (tmp_path / "class_thresholds.md").read_text()
    assert (tmp_path / "class_thresholds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_ood_refuses_bad_arguments_with_a_clear_message(tmp_path, capsys):
    assert cli_main(["bench", "ood", "--limit", "2", "--output-dir", str(tmp_path)]) == 2
    assert "--limit" in capsys.readouterr().err
    assert cli_main(["bench", "ood", "--sets", "CIFAR", "--output-dir", str(tmp_path), "--no-progress"]) == 2
    assert "unknown OOD set" in capsys.readouterr().err
    assert cli_main(["bench", "ood", "--architectures", "vgg", "--output-dir", str(tmp_path)]) == 2
    assert "--architectures" in capsys.readouterr().err
    assert cli_main(["bench", "ood", "--seeds", "7", "--output-dir", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    empty = tmp_path / "no-models"
    empty.mkdir()
    assert cli_main(["bench", "ood", "--quick", "--models-dir", str(empty), "--output-dir", str(tmp_path),
                     "--no-progress"]) == 2
    assert "deploy/train_ood_models.py" in capsys.readouterr().err
