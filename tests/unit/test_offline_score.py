"""`ood-monitor score` and the offline demo, run through the real command line in-process."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.errors import InputError
from monitor.names import INDICATORS
from monitor.offline import COLUMNS, SAMPLES_DIR, bundled_samples, collect_inputs

# Small calibration: the test checks the plumbing, the science has its own tests.
CALIBRATION = ["--calibration-samples", "128", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calibration-cache")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Six sample images (3 in-distribution, 3 OOD), one corrupt PNG in a sub-folder, and a
    text file and a hidden image that a folder walk must skip."""
    root = tmp_path_factory.mktemp("inputs")
    picked = [s for s in bundled_samples() if s.kind == "id"][:3] + [s for s in bundled_samples() if s.kind == "ood"][::7]
    for sample in picked:
        shutil.copy(sample.path, root / sample.path.name)
    (root / "nested").mkdir()
    (root / "nested" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(picked[0].path.read_bytes())
    return root


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_score_writes_csv_with_canonical_columns_and_rejected_rows(inputs, cache_dir, tmp_path, capsys):
    output = tmp_path / "scores.csv"
    code, _, err = run_cli(
        ["score", str(inputs), "--model", "demo", "--cache-dir", str(cache_dir), "--output", str(output),
         "--batch-size", "4", *CALIBRATION],
        capsys,
    )
    assert code == 0, err
    with open(output, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [dict(zip(header, values)) for values in reader]
    assert tuple(header) == COLUMNS
    assert header[-len(INDICATORS):] == list(INDICATORS)
    assert len(rows) == 7  # six images and the broken one; notes.txt and the hidden file are skipped
    broken = [r for r in rows if r["path"].endswith("broken.png")]
    assert len(broken) == 1
    assert broken[0]["status"] == "rejected" and broken[0]["reject_reason"] in ("corrupt", "truncated")
    assert broken[0]["reject_detail"] and broken[0]["MP"] == "" and broken[0]["predicted"] == ""
    scored = [r for r in rows if r["status"] == "scored"]
    assert len(scored) == 6
    for row in scored:
        assert row["reject_reason"] == "" and 0 <= int(row["predicted"]) < 10 and row["predicted_name"]
        assert row["ODIN"] == ""  # not asked for: absent, left empty
        for name in INDICATORS:
            if name != "ODIN":
                float(row[name])
    assert "scored 6, rejected 1" in err


def test_score_jsonl_with_odin_keeps_input_order(inputs, cache_dir, capsys):
    files = sorted(p for p in inputs.glob("*.png") if not p.name.startswith("."))
    code, out, err = run_cli(
        ["score", *map(str, files), "--model", "demo", "--cache-dir", str(cache_dir), "--odin",
         "--format", "jsonl", *CALIBRATION],
        capsys,
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in files]
    for record in records:
        assert list(record) == list(COLUMNS)
        assert record["status"] == "scored"
        assert all(isinstance(record[name], float) for name in INDICATORS), record
    # In-distribution samples are the Fashion-MNIST ones: the demo model names their class.
    id_records = [r for r in records if Path(r["path"]).name.startswith("id-")]
    assert id_records and all(isinstance(r["predicted_name"], str) for r in id_records)


def test_score_with_a_factory_model_converts_grey_to_its_rgb_input(inputs, cache_dir, tmp_path, capsys):
    import torch

    from tests.unit.test_classifiers import tiny_factory

    weights = tmp_path / "tiny.pt"
    torch.save(tiny_factory(3).state_dict(), weights)
    code, out, err = run_cli(
        ["score", str(inputs), "--model", "tests.unit.test_classifiers:tiny_factory", "--weights", str(weights),
         "--num-classes", "3", "--input-shape", "3,16,16", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
         "--cache-dir", str(cache_dir), "--format", "jsonl", *CALIBRATION],
        capsys,
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    scored = [r for r in records if r["status"] == "scored"]
    assert len(scored) == 6
    for record in scored:
        assert 0 <= record["predicted"] < 3 and record["predicted_name"] is None
        assert isinstance(record["DMS"], float) and isinstance(record["ANG++"], float)


def test_nothing_scorable_exits_1_and_still_reports_the_rows(tmp_path, cache_dir, capsys):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "words.jpg"
    text.write_text("hello")
    code, out, err = run_cli(
        ["score", str(empty), str(text), "--model", "demo", "--cache-dir", str(cache_dir), *CALIBRATION],
        capsys,
    )
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(Path(r["path"]).name, r["reject_reason"]) for r in rows] == [
        ("empty.png", "empty"),
        ("words.jpg", "unknown_format"),
    ]
    assert "nothing could be scored" in err


def test_usage_errors_exit_2_with_a_message(tmp_path, cache_dir, capsys):
    code, _, err = run_cli(["score", str(tmp_path / "missing"), "--model", "demo", *CALIBRATION], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(
        ["score", str(SAMPLES_DIR), "--model", "tests.unit.test_classifiers:tiny_factory", "--cache-dir",
         str(cache_dir), *CALIBRATION],
        capsys,
    )
    assert code == 2 and "input shape" in err
    with pytest.raises(SystemExit):
        main(["score", str(SAMPLES_DIR)])  # --model is required
    capsys.readouterr()


def test_collect_inputs_walks_folders_for_image_files(inputs):
    files = collect_inputs([inputs])
    names = [p.name for p in files]
    assert "notes.txt" not in names and ".hidden.png" not in names and "broken.png" in names
    assert files == sorted(files)
    explicit = collect_inputs([inputs / "notes.txt"])
    assert explicit == [inputs / "notes.txt"]  # named files are always read (and then judged by content)
    with pytest.raises(InputError, match="no image files"):
        collect_inputs([_empty_dir(inputs)])


def _empty_dir(root: Path) -> Path:
    path = root / "empty-folder"
    path.mkdir(exist_ok=True)
    return path


def test_score_takes_its_defaults_from_the_settings_as_the_daemon_does(monkeypatch, tmp_path):
    import argparse

    from monitor.imaging import DEFAULT_LIMITS
    from monitor.offline import _configured, _limits
    from monitor.settings import ImagingSettings

    # One default for both: what [imaging] documents is what the offline scorer refuses.
    assert (DEFAULT_LIMITS.max_bytes, DEFAULT_LIMITS.max_pixels) == (ImagingSettings().max_bytes,
                                                                     ImagingSettings().max_pixels)
    config = tmp_path / "monitor.toml"
    config.write_text('[imaging]\nmax_bytes = 1234\n[model]\ncache_dir = "calibrations"\n')
    args = argparse.Namespace(config=str(config), max_bytes=None, max_pixels=None)
    settings = _configured(args)
    assert _limits(args, settings.imaging).max_bytes == 1234 and settings.model.cache_dir == "calibrations"
    monkeypatch.setenv("MONITOR_MODEL__CACHE_DIR", str(tmp_path / "mine"))
    assert _configured(args).model.cache_dir == str(tmp_path / "mine")
    assert _limits(argparse.Namespace(max_bytes=99, max_pixels=None), settings.imaging).max_bytes == 99


def test_offline_demo_ranks_the_bundled_samples(cache_dir, capsys):
    import argparse

    from monitor.offline import run_offline_demo

    args = argparse.Namespace(cache_dir=str(cache_dir), calibration_samples=128, no_progress=True, device="cpu")
    assert run_offline_demo(args) == 0
    out = capsys.readouterr().out
    assert "40 bundled images (20 Fashion-MNIST, 20 out-of-distribution)" in out
    table = [line for line in out.splitlines() if line.strip()[:1].isdigit() and ".png" in line]
    assert len(table) == 40
    values = [float(line.split()[1]) for line in table]
    assert values == sorted(values, reverse=True)
    auroc = float(out.split("auROC of 1C-Sum, OOD against in-distribution: ")[1].split()[0])
    assert auroc >= 0.8
