"""Throughput of the Scorer against the bare forward pass, measured side by side in one run.

    python -m tests.benchmarks.bench_indicators            # full run, saves docs/benchmarks/
    python -m tests.benchmarks.bench_indicators --quick    # small run, saves benchmarks-out/

Three variants per configuration, timed in turn within every repetition so that they share
the machine's load: the bare forward (normalisation + model, no hooks), the Scorer without
ODIN (every other indicator and 1C-Sum, results on the CPU) and the Scorer with ODIN.
Figures are medians over the repetitions, after warm-up. Random weights: speed does not
depend on training.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from tqdm.auto import tqdm

from monitor import Scorer
from monitor.evaluation.machine import cpu_model

GOAL_OVERHEAD = 0.10  # the full indicator set (no ODIN) within 10 % of the bare forward
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Config:
    architecture: str
    size: int
    batch: int
    repeats: int
    warmup: int = 2


FULL = (
    Config("resnet18", 32, 16, repeats=15),
    Config("resnet18", 32, 64, repeats=10),
    Config("resnet50", 224, 4, repeats=5, warmup=1),
    Config("resnet50", 224, 16, repeats=3, warmup=1),
)
QUICK = (
    Config("resnet18", 32, 16, repeats=5, warmup=1),
    Config("resnet18", 32, 64, repeats=3, warmup=1),
)


def machine() -> dict:
    cpu = cpu_model()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else cpu,
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function, device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, process CPU seconds) of one call."""
    _synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    _synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def measure(config: Config, device: torch.device, progress: bool = True) -> dict:
    """Images per second of the three variants for one configuration."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, config.architecture)(num_classes=10).to(device).eval()
    shape = (3, config.size, config.size)
    images = torch.rand((config.batch, *shape), generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    # The bare forward runs on an unhooked copy: the probe's idle hooks are the Scorer's cost.
    bare_model = copy.deepcopy(model)

    def bare() -> None:
        with torch.inference_mode():
            # What serving the model costs anyway: input to the device, normalise, forward.
            bare_model((images.to(device) - mean) / std).cpu()

    scorer = Scorer(model, mean=MEAN, std=STD, input_shape=shape)
    scorer.calibrate(n=max(2, config.batch), batch_size=config.batch, progress=False)
    with_odin = Scorer(model, mean=MEAN, std=STD, input_shape=shape, odin=True,
                       calibration=scorer.calibration)
    variants = {
        "bare": bare,
        "scorer": lambda: scorer.score_batch(images),
        "scorer_odin": lambda: with_odin.score_batch(images),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in variants}
    label = f"{config.architecture} {config.size}x{config.size} batch {config.batch}"
    for repetition in tqdm(range(config.warmup + config.repeats), desc=label, disable=not progress):
        # Alternate the order so no variant always runs right after the expensive one.
        order = list(variants) if repetition % 2 == 0 else list(reversed(variants))
        for name in order:
            elapsed, elapsed_cpu = _timed(variants[name], device)
            if repetition >= config.warmup:
                seconds[name].append(elapsed)
                cpu_seconds[name].append(elapsed_cpu)
    scorer.close()
    with_odin.close()

    def paired_overhead(times: dict[str, list[float]], variant: str) -> float:
        # Ratios within a repetition cancel most of the load drift between repetitions.
        return statistics.median(v / b for v, b in zip(times[variant], times["bare"])) - 1

    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        **asdict(config),
        "indicators": len(scorer.available),
        "bare_images_per_s": config.batch / median["bare"],
        "scorer_images_per_s": config.batch / median["scorer"],
        "scorer_odin_images_per_s": config.batch / median["scorer_odin"],
        "scorer_overhead": paired_overhead(seconds, "scorer"),
        "odin_overhead": paired_overhead(seconds, "scorer_odin"),
        "scorer_cpu_overhead": paired_overhead(cpu_seconds, "scorer"),
        "odin_cpu_overhead": paired_overhead(cpu_seconds, "scorer_odin"),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def markdown(report: dict) -> str:
    info = report["machine"]
    lines = [
        "# Indicator throughput",
        "",
        f"Machine: {info['cpu']} ({info['cpu_cores']} cores), {info['torch_threads']} torch "
        f"thread(s), device {info['device_name']}, torch {info['torch']}, torchvision "
        f"{info['torchvision']}. Load average (1, 5, 15 min) before / after: "
        f"{report['load_before']} / {report['load_after']}.",
        f"Command: `{report['command']}`. Images/s are wall-clock medians over the repetitions "
        "after warm-up; overheads are medians of per-repetition ratios to the bare forward, by "
        "wall clock and by process CPU time (steadier when other jobs share the machine).",
        "",
        "| model | input | batch | bare forward | Scorer (no ODIN) | overhead wall / CPU "
        "| Scorer + ODIN | ODIN overhead wall / CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['architecture']} | {row['size']}x{row['size']} | {row['batch']} "
            f"| {row['bare_images_per_s']:.1f} | {row['scorer_images_per_s']:.1f} "
            f"| {100 * row['scorer_overhead']:+.1f} % / {100 * row['scorer_cpu_overhead']:+.1f} % "
            f"| {row['scorer_odin_images_per_s']:.1f} "
            f"| {100 * row['odin_overhead']:+.1f} % / {100 * row['odin_cpu_overhead']:+.1f} % |"
        )
    met = {key: "met" if value else "NOT met" for key, value in report["goal_met"].items()}
    lines += [
        "",
        f"Goal, every indicator but ODIN within {100 * GOAL_OVERHEAD:.0f} % of the bare forward "
        f"in every configuration: {met['wall']} by wall clock, {met['cpu']} by CPU time.",
        "",
        "Bare forward: input to the device, (x - mean) / std, model, logits to the CPU, on an "
        "unhooked copy of the model. Scorer: the same plus input validation, the probe's hooks, "
        "every indicator and 1C-Sum, results to the CPU. ODIN adds a backward pass and a second "
        "forward.",
        "",
    ]
    return "\n".join(lines)


def run(configs, out_dir: Path, progress: bool = True, command: str = "") -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load_before = [round(v, 2) for v in os.getloadavg()]
    results = [measure(config, device, progress) for config in configs]
    report = {
        "benchmark": "indicators",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": machine(),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "goal_overhead": GOAL_OVERHEAD,
        "goal_met": {
            "wall": all(r["scorer_overhead"] <= GOAL_OVERHEAD for r in results),
            "cpu": all(r["scorer_cpu_overhead"] <= GOAL_OVERHEAD for r in results),
        },
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "indicators.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "indicators.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 only, fewer repetitions")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for indicators.json/.md (default docs/benchmarks, "
                             "benchmarks-out with --quick)")
    args = parser.parse_args(argv)
    out_dir = args.out or REPOSITORY / ("benchmarks-out" if args.quick else "docs/benchmarks")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m tests.benchmarks.bench_indicators" + (" --quick" if args.quick else "")
    command += f" --threads {args.threads}" if args.threads else ""
    report = run(QUICK if args.quick else FULL, out_dir, command=command)
    print(markdown(report))
    print(f"saved {out_dir / 'indicators.json'} and {out_dir / 'indicators.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
