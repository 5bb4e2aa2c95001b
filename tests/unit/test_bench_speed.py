"""`ood-monitor bench speed`: every method timed on the same model and batches, figures saved.

No timing is asserted (the machine is shared); what is checked is that the comparison is
fair and complete: same inputs for all, the five-detector row is the five detectors run
one after another, the report holds every configuration and says what it ran on.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from monitor.cli import main as cli_main
from monitor.errors import InputError
from monitor.evaluation import speed


class TinyNet(nn.Module):
    """Conv + batch-norm + linear head: the smallest model every indicator family applies to."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def _tiny_subject():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():  # non-trivial running statistics, as a trained model has
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return speed.Subject("tiny", model, (1, 12, 12), (0.3,), (0.35,), "test model")


def test_time_methods_runs_round_robin_with_a_warm_up():
    calls = []
    methods = {"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")}
    times = speed.time_methods(methods, torch.zeros(2, 1, 4, 4), rounds=3, progress=False)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}
    with pytest.raises(InputError, match="rounds"):
        speed.time_methods(methods, torch.zeros(1), rounds=0)


def test_pytorch_ood_detectors_score_the_model_our_indicators_score():
    """Same network, same batch: pytorch-ood's MSP is our MP shifted by one, so both sides
    time the same model on the same inputs."""
    from monitor import Scorer

    subject = _tiny_subject()
    network = speed.Normalized(subject.model, subject.mean, subject.std).eval()
    batch = torch.rand(6, *subject.input_shape, generator=torch.Generator().manual_seed(1))
    scorer = Scorer(subject.model, mean=subject.mean, std=subject.std, input_shape=subject.input_shape, odin=True)
    scorer.calibrate(n=32, progress=False)
    ours = scorer.score(batch)
    theirs = speed.pytorch_ood_detectors(network)
    assert set(theirs) == set(speed.PYTORCH_OOD)
    torch.testing.assert_close(ours["MP"].float(), 1 + theirs["MSP"](batch).float(), atol=1e-5, rtol=0)
    # ODIN: both perturb by eps * sign(grad) in pixel space at T = 1000 and read the max softmax.
    torch.testing.assert_close(ours["ODIN"].float(), 1 + theirs["ODIN"](batch).float().detach(), atol=1e-5, rtol=0)


def test_measure_reports_every_method_and_the_five_detectors_in_a_row():
    row = speed.measure(_tiny_subject(), 5, torch.device("cpu"), rounds=2, progress=False, calibration_samples=32)
    rates = row["images_per_second"]
    assert set(rates) == {speed.FORWARD, speed.SCORER, speed.SCORER_ODIN, *speed.PYTORCH_OOD, speed.PYTORCH_OOD_ALL}
    assert all(value > 0 for value in rates.values())
    assert row["rounds"] == 2 and row["batch_size"] == 5 and row["input_shape"] == [1, 12, 12]
    # The five in a row take as long as the five together, round by round.
    seconds = row["median_seconds"]
    assert seconds[speed.PYTORCH_OOD_ALL] >= max(seconds[name] for name in speed.PYTORCH_OOD)
    assert row["scorer_outputs"] == 19  # 18 indicators + 1C-Sum without ODIN
    assert speed.speedup(row) == pytest.approx(rates[speed.SCORER_ODIN] / rates[speed.PYTORCH_OOD_ALL])


def test_bench_speed_command_writes_json_markdown_and_plot(tmp_path, capsys):
    code = cli_main(["bench", "speed", "--quick", "--device", "cpu", "--output-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    configurations = {(r["model"], r["input_shape"][1], r["batch_size"]) for r in result["rows"]}
    assert configurations == {("demo ResNet", 28, 4), ("demo ResNet", 28, 8), ("resnet18", 32, 4), ("resnet18", 32, 8)}
    assert all(r["device"] == "cpu" for r in result["rows"])
    assert result["machine"]["cpu_cores"] >= 1 and result["machine"]["torch"] == torch.__version__
    goal = result["goals"]["scorer_faster_than_five_detectors"]
    assert goal["rows"] == 4 and isinstance(goal["met"], bool)
    markdown = (tmp_path / "speed.md").read_text()
    assert speed.PYTORCH_OOD_ALL in markdown
    assert f"`ood-monitor bench speed --quick --device cpu --output-dir {tmp_path}`" in markdown
    assert (tmp_path / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pytorch-ood x5" in capsys.readouterr().out


def test_bench_speed_refuses_cuda_where_there_is_none(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli_main(["bench", "speed", "--quick", "--device", "cuda", "--output-dir", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
