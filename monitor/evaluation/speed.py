"""Images per second of the Scorer beside the bare forward pass and pytorch-ood's detectors.

Every method sees the same model (input normalisation included, so all take pixel-space
images), the same batches and the same device. Methods are timed round-robin, one batch
each per round, so that load from other processes on shared cores hits them all alike; the
figure is the batch size over the median time of a round. "pytorch-ood, five detectors"
is the sum, round by round, of the five detectors that just ran one after another.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from monitor.errors import InputError


FORWARD = "forward pass"
SCORER = "Scorer without ODIN (one forward pass)"
SCORER_ODIN = "Scorer, all 19 indicators + 1C-Sum"
PYTORCH_OOD = ("MSP", "Energy", "Entropy", "MaxLogit", "ODIN")
PYTORCH_OOD_ALL = "pytorch-ood, five detectors one after another"


class Normalized(nn.Module):
    """model((x - mean) / std): the network as the outside world calls it, on [0, 1] pixels."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        parameter = next(model.parameters())
        self.register_buffer("mean", torch.tensor(mean, dtype=parameter.dtype, device=parameter.device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=parameter.dtype, device=parameter.device).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


@dataclass
class Subject:
    """A model to time: its name and what it expects."""

    name: str
    model: nn.Module
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


def demo_subject(device: torch.device) -> Subject:
    from monitor.classifiers import load_classifier

    loaded = load_classifier("demo", device=device)
    pre = loaded.preprocessing
    return Subject("demo ResNet", loaded.model, pre.input_shape, pre.mean, pre.std, "bundled Fashion-MNIST ResNet")


def resnet18_subject(side: int, device: torch.device) -> Subject:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=1000).to(device).eval()
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return Subject(
        "resnet18", model, (3, side, side), imagenet_mean, imagenet_std, "torchvision resnet18, random weights"
    )


def pytorch_ood_detectors(network: nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """pytorch-ood 0.4.0's MSP, Energy, Entropy, MaxLogit and ODIN on `network` (pixel input)."""
    try:
        from pytorch_ood.detector import ODIN, EnergyBased, Entropy, MaxLogit, MaxSoftmax
    except ImportError:
        raise InputError("the speed comparison needs PyPI pytorch-ood==0.4.0: pip install --no-deps pytorch-ood==0.4.0") from None
    odin = ODIN(network, eps=8e-4, temperature=1000.0)  # the same T and epsilon as our ODIN
    detectors = {
        "MSP": MaxSoftmax(network),
        "Energy": EnergyBased(network),
        "Entropy": Entropy(network),
        "MaxLogit": MaxLogit(network),
    }

    def without_grad(detector):
        def run(x):
            with torch.no_grad():
                return detector.predict(x)

        return run

    methods = {name: without_grad(detector) for name, detector in detectors.items()}
    methods["ODIN"] = odin.predict  # needs the input gradient: no torch.no_grad around it
    return methods


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(
    methods: dict[str, Callable[[torch.Tensor], object]],
    batch: torch.Tensor,
    rounds: int,
    min_seconds: float = 0.0,
    max_rounds: int | None = None,
    progress: bool = True,
    description: str | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each method on `batch`, round-robin; one warm-up round first.
    Runs at least `rounds` rounds, more while under `min_seconds` (up to `max_rounds`)."""
    if rounds < 1:
        raise InputError(f"rounds must be at least 1, not {rounds!r}")
    device = batch.device
    for method in methods.values():  # warm-up: lazy set-up, allocator, cuDNN autotuning
        method(batch)
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    started = time.perf_counter()
    bar = tqdm(desc=description, unit="round", disable=not progress, leave=False)
    done = 0
    while done < rounds or (time.perf_counter() - started < min_seconds and (max_rounds is None or done < max_rounds)):
        for name, method in methods.items():
            _synchronize(device)
            tic = time.perf_counter()
            method(batch)
            _synchronize(device)
            times[name].append(time.perf_counter() - tic)
        done += 1
        bar.update(1)
    bar.close()
    return times


def calibrate(subject: Subject, device: torch.device, samples: int, progress: bool = True,
              scorer_factory: Callable[..., object] | None = None):
    """1C-Sum's calibration for a subject: set-up, never timed (the service calibrates once
    per model and caches it)."""
    from monitor import Scorer

    factory = scorer_factory or Scorer
    scorer = factory(copy.deepcopy(subject.model).to(device), mean=subject.mean, std=subject.std,
                     input_shape=subject.input_shape)
    try:
        return scorer.calibrate(n=samples, progress=progress)
    finally:
        scorer.close()


def measure(
    subject: Subject,
    batch_size: int,
    device: torch.device,
    rounds: int = 3,
    min_seconds: float = 0.0,
    max_rounds: int | None = None,
    scorer_factory: Callable[..., object] | None = None,
    progress: bool = True,
    calibration_samples: int = 2048,
    calibration=None,
) -> dict:
    """One row group: images/s of every method for one model, input size, batch size, device."""
    from monitor import Scorer

    factory = scorer_factory or Scorer
    model = subject.model.to(device).eval()
    network = Normalized(model, subject.mean, subject.std).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand((batch_size, *subject.input_shape), generator=generator).to(device)
    if calibration is None:
        calibration = calibrate(subject, device, calibration_samples, progress, factory)
    # Own copies for the scorers: their hooks must not slow down the baselines' model.
    scorer = factory(
        copy.deepcopy(model), mean=subject.mean, std=subject.std, input_shape=subject.input_shape,
        calibration=calibration,
    )
    scorer_odin = factory(
        copy.deepcopy(model), mean=subject.mean, std=subject.std, input_shape=subject.input_shape,
        odin=True, calibration=calibration,
    )

    def forward(x):
        with torch.no_grad():
            return network(x)

    methods: dict[str, Callable[[torch.Tensor], object]] = {
        FORWARD: forward,
        SCORER: scorer.score,
        SCORER_ODIN: scorer_odin.score,
    }
    methods.update(pytorch_ood_detectors(network))
    label = f"{subject.name} {subject.input_shape[1]}px b{batch_size} {device.type}"
    times = time_methods(methods, batch, rounds, min_seconds, max_rounds, progress, label)
    times[PYTORCH_OOD_ALL] = [sum(times[name][i] for name in PYTORCH_OOD) for i in range(len(times[FORWARD]))]
    indicators = sorted(scorer.score(batch[:2]).keys())
    return {
        "model": subject.name,
        "model_description": subject.description,
        "input_shape": list(subject.input_shape),
        "batch_size": batch_size,
        "device": str(device),
        "rounds": len(times[FORWARD]),
        "scorer_outputs": len(indicators),
        "images_per_second": {name: batch_size / statistics.median(values) for name, values in times.items()},
        "median_seconds": {name: statistics.median(values) for name, values in times.items()},
    }


def speedup(row: dict, scorer: str = SCORER_ODIN) -> float:
    """How many times faster the Scorer is than pytorch-ood's five detectors in a row; by
    default the Scorer with ODIN, so that both sides pay for ODIN's backward pass."""
    rates = row["images_per_second"]
    return rates[scorer] / rates[PYTORCH_OOD_ALL]


# --- `ood-monitor bench speed` ------------------------------------------------------------------

# Batch sizes per device kind and input side: 224x224 on two CPU cores would take minutes a round at 64.
FULL_BATCHES = {("cpu", "small"): (16, 64), ("cpu", "large"): (4, 16), ("cuda", "small"): (64, 256), ("cuda", "large"): (32, 128)}
QUICK_BATCHES = (4, 8)
LARGE_SIDE = 128
# 1C-Sum's calibration is set-up, not timed; its size does not change the timed work.
CALIBRATION_SAMPLES = 128
GOAL = "scoring all 19 indicators in one Scorer call is faster than pytorch-ood's five detectors run one after another"


def subjects(quick: bool, device: torch.device) -> list[Subject]:
    """Demo model at 28x28 and resnet18 at 32x32 (and, unless quick, 224x224)."""
    chosen = [demo_subject(device), resnet18_subject(32, device)]
    if not quick:
        chosen.append(resnet18_subject(224, device))
    return chosen


def run_speed_benchmark(quick: bool = False, devices: Sequence[str] | None = None, progress: bool = True,
                        scorer_factory: Callable[..., object] | None = None) -> dict:
    """Every subject x batch size x device; returns the JSON-ready result (writes nothing)."""
    from monitor.evaluation import machine

    started = time.perf_counter()
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device_name in devices:  # refuse a bad device before timing anything
        try:
            device = torch.device(device_name)
        except (RuntimeError, TypeError):
            raise InputError(f"--device {device_name!r} is not a torch device (cpu, cuda, cuda:1)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device_name}: CUDA is not available on this machine")
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        for subject in subjects(quick, device):
            size = "large" if subject.input_shape[1] >= LARGE_SIDE else "small"
            batches = QUICK_BATCHES if quick else FULL_BATCHES[("cuda" if device.type == "cuda" else "cpu", size)]
            calibration = calibrate(subject, device, CALIBRATION_SAMPLES, progress, scorer_factory)
            for batch_size in batches:
                rows.append(
                    measure(
                        subject,
                        batch_size,
                        device,
                        rounds=1 if quick else (3 if size == "large" else 5),
                        min_seconds=0.0 if quick else 5.0,
                        max_rounds=1 if quick else 30,
                        scorer_factory=scorer_factory,
                        progress=progress,
                        calibration=calibration,
                    )
                )
    speedups = [speedup(row) for row in rows]
    one_pass = [speedup(row, SCORER) for row in rows]
    try:
        from importlib.metadata import version

        pytorch_ood_version = version("pytorch-ood")
    except Exception:  # noqa: BLE001 - the version is only a label in the report
        pytorch_ood_version = "unknown"
    return {
        "machine": machine.describe(torch.device(devices[-1])),
        "pytorch_ood_version": pytorch_ood_version,
        "quick": quick,
        "rows": rows,
        "goals": {
            "scorer_faster_than_five_detectors": {
                "goal": GOAL,
                "rows": len(rows),
                "rows_met": sum(s > 1 for s in speedups),
                "min_speedup": min(speedups),
                "max_speedup": max(speedups),
                "met": all(s > 1 for s in speedups),
                "rows_met_without_odin": sum(s > 1 for s in one_pass),
                "min_speedup_without_odin": min(one_pass),
                "max_speedup_without_odin": max(one_pass),
            }
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(args) -> int:
    """Entry point of `ood-monitor bench speed`."""
    from pathlib import Path

    from monitor.evaluation import ood_bench, report

    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--output-dir {str(output_dir)!r} cannot be created: {error}") from None
    result = run_speed_benchmark(quick=args.quick, devices=args.device, progress=not args.no_progress)
    result["command"] = ood_bench.command_line(args, (("quick", "--quick"), ("device", "--device"), ("output_dir", "--output-dir")))
    paths = report.write_speed(result, output_dir)
    print(report.speed_console_summary(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
