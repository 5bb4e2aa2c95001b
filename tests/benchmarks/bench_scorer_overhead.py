"""The Scorer's cost over the bare eager forward pass at one batch size, without and with ODIN.

    python -m tests.benchmarks.bench_scorer_overhead --device cuda --out-dir "$OUT"
    python -m tests.benchmarks.bench_scorer_overhead --device cpu --quick     # a smoke run

The same models as `ood-monitor bench speed` (the demo model at 1x28x28, an untrained ResNet-18 at
3x32x32 and 3x224x224), the same timing (monitor.evaluation.speed.time_methods: round-robin, the
median round), but only the three methods the goal speaks of: the forward pass under no_grad, the
Scorer without ODIN (one forward pass with its hooks) and with ODIN (a backward pass more). Where
the compiled kernels are in use, also the Scorer without them (torch operations only, as with
MONITOR_FUSED_KERNELS=0): on a GPU the kernels copy three small tables to the host per batch, the
torch operations keep everything on the device and launch more kernels, and which costs less there
is measured here, not assumed. The ratio Scorer / forward is printed and saved as JSON and Markdown (scorer-overhead{,-cuda}.*),
with the machine (and nvidia-smi's line for the GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[2]
GOAL = 1.10  # the Scorer without ODIN at most 1.10x the bare forward pass (on a GPU, batch 64)
SCORER_TORCH = "Scorer without ODIN, torch operations only"


def measure(subject, batch_size: int, device, rounds: int, min_seconds: float, max_rounds: int) -> dict[str, Any]:
    import torch

    from monitor import Scorer
    from monitor.evaluation.speed import FORWARD, SCORER, SCORER_ODIN, Normalized, calibrate, time_methods
    from monitor.indicators import kernels

    model = subject.model.to(device).eval()
    network = Normalized(model, subject.mean, subject.std).to(device).eval()
    batch = torch.rand((batch_size, *subject.input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    calibration = calibrate(subject, device, 128, progress=False)
    scorer = Scorer(copy.deepcopy(model), mean=subject.mean, std=subject.std, input_shape=subject.input_shape,
                    calibration=calibration)
    scorer_odin = Scorer(copy.deepcopy(model), mean=subject.mean, std=subject.std, input_shape=subject.input_shape,
                         odin=True, calibration=calibration)

    def forward(x):
        with torch.no_grad():
            return network(x)

    def scorer_torch_only(x):
        kernels.use_kernels(False)
        try:
            return scorer.score(x)
        finally:
            kernels.use_kernels(None)

    methods = {FORWARD: forward, SCORER: scorer.score, SCORER_ODIN: scorer_odin.score}
    if kernels.enabled():  # else the Scorer uses torch operations only already
        methods[SCORER_TORCH] = scorer_torch_only
    label = f"{subject.name} {subject.input_shape[1]}px b{batch_size} {device.type}"
    times = time_methods(methods, batch, rounds, min_seconds, max_rounds, True, label)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"model": subject.name, "input_shape": list(subject.input_shape), "batch_size": batch_size,
            "device": str(device), "rounds": len(times[FORWARD]), "median_ms": {k: 1000 * v for k, v in median.items()},
            "scorer_over_forward": median[SCORER] / median[FORWARD],
            "scorer_odin_over_forward": median[SCORER_ODIN] / median[FORWARD],
            "scorer_torch_over_forward": median[SCORER_TORCH] / median[FORWARD] if SCORER_TORCH in median else None}


def markdown(report: dict[str, Any]) -> str:
    from monitor.evaluation.speed import FORWARD, SCORER, SCORER_ODIN

    info = report["machine"]
    lines = ["# The Scorer over the bare forward pass", "",
             f"Measured {info['date']} on {info['cpu']} ({info['cpu_cores']} cores"
             f"{', GPU ' + info['gpu'] if info.get('gpu') else ''}), torch {info['torch']}, device `{report['device']}`, "
             f"batch {report['batch_size']}. Produced by `python -m tests.benchmarks.bench_scorer_overhead` "
             "(method: its docstring). Goal on a GPU: the Scorer without ODIN at most "
             f"{GOAL:.2f}x the forward pass."]
    if info.get("nvidia_smi"):
        lines += ["", f"nvidia-smi: `{info['nvidia_smi']}`"]
    lines += ["", "| model | input | rounds | forward ms | Scorer ms | Scorer / forward | Scorer, torch ops only ms "
              "| torch ops only / forward | Scorer with ODIN ms | with ODIN / forward |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        ms = row["median_ms"]
        torch_only = (f"{ms[SCORER_TORCH]:.2f} | {row['scorer_torch_over_forward']:.2f}x" if SCORER_TORCH in ms
                      else "- | -")
        lines.append(f"| {row['model']} | {'x'.join(map(str, row['input_shape']))} | {row['rounds']} | "
                     f"{ms[FORWARD]:.2f} | {ms[SCORER]:.2f} | {row['scorer_over_forward']:.2f}x | {torch_only} | "
                     f"{ms[SCORER_ODIN]:.2f} | {row['scorer_odin_over_forward']:.2f}x |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from monitor.evaluation.speed import demo_subject, resnet18_subject
    from tests.benchmarks.bench_workers import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="batch 4, one round, no 224x224: a smoke run")
    parser.add_argument("--out-dir", type=Path, help="where the JSON and Markdown go")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size: at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    batch_size = 4 if args.quick else args.batch_size
    subjects = [demo_subject(device), resnet18_subject(32, device)]
    if not args.quick:
        subjects.append(resnet18_subject(224, device))
    rows = [measure(subject, batch_size, device, rounds=1 if args.quick else 5, min_seconds=0.0 if args.quick else 5.0,
                    max_rounds=1 if args.quick else 200) for subject in subjects]
    report = {"device": str(device), "batch_size": batch_size, "rows": rows, "machine": machine(str(device))}
    text = markdown(report)
    with tempfile.TemporaryDirectory(prefix="bench-scorer-") as scratch:
        out_dir = args.out_dir or (Path(scratch) if args.quick else ROOT / "docs" / "benchmarks")
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"scorer-overhead{'-cuda' if device.type == 'cuda' else ''}"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
        print(text)
        print(f"saved {stem}.json and {stem}.md")
    return report


if __name__ == "__main__":
    main()
