"""JSON, Markdown and PNG output of the benchmarks (matplotlib, Agg backend); the OOD
benchmark's own files are written by `monitor.evaluation.ood_report`, with the helpers shared
here (`write_json`, `write_text`, `format_number`, `pyplot`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from monitor.evaluation import machine, speed

SPEED_PNG = "speed.png"


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value):
    """NaN/inf -> None and keys -> strings (numpy integers among them), so the JSON stays standard."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def write_json(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(_clean(data), indent=2, default=_json_default) + "\n")
    return path


def format_number(value, digits: int = 1) -> str:
    """A table cell: the value with `digits` decimals, a dash where there is none (None, NaN, inf)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def pyplot():
    """matplotlib's pyplot on the Agg backend: the benchmarks draw files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_text(path: Path, text: str) -> Path:
    """Write a Markdown (or other text) output and return its path, as `write_json` does."""
    path.write_text(text)
    return path


# --- speed ------------------------------------------------------------------------------------


def _speed_methods(rows: Sequence[dict]) -> list[str]:
    return list(rows[0]["images_per_second"])


def speed_markdown(result: dict) -> str:
    rows = result["rows"]
    methods = _speed_methods(rows)
    lines = [
        "# Scoring speed",
        "",
        f"Regenerate: `{result.get('command', 'ood-monitor bench speed')}` ({result['seconds']:.0f} s).",
        "",
        f"Machine: {machine.describe_line(result['machine'])}.",
        "",
        "Images per second (higher is better), every method on the same model, the same batches of "
        "random [0, 1] pixels and the same device, timed round-robin (median over rounds, one warm-up "
        "round first). pytorch-ood " + result.get("pytorch_ood_version", "") + " detectors get the model with the "
        "input normalisation in front, so they too take pixel-space images; ODIN on both sides uses "
        "T = 1000 and ε = 8e-4.",
        "",
        "## Headline",
        "",
        f"| model | input | batch | device | {speed.PYTORCH_OOD_ALL} | {speed.SCORER_ODIN} | speed-up | {speed.SCORER} | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rates = row["images_per_second"]
        lines.append(
            f"| {row['model']} | {_shape(row)} | {row['batch_size']} | {row['device']} | "
            f"{_rate(rates[speed.PYTORCH_OOD_ALL])} | {_rate(rates[speed.SCORER_ODIN])} | "
            f"{speed.speedup(row):.2f}x | {_rate(rates[speed.SCORER])} | {speed.speedup(row, speed.SCORER):.2f}x |"
        )
    goal = result["goals"]["scorer_faster_than_five_detectors"]
    lines += [
        "",
        f"Goal: {goal['goal']} (ODIN included on both sides): **{'met' if goal['met'] else 'not met'}**; "
        f"faster in {goal['rows_met']} of {goal['rows']} configurations, speed-up from "
        f"{goal['min_speedup']:.2f}x to {goal['max_speedup']:.2f}x. Without ODIN (one forward pass) the Scorer is "
        f"faster in {goal['rows_met_without_odin']} of {goal['rows']}, from {goal['min_speedup_without_odin']:.2f}x "
        f"to {goal['max_speedup_without_odin']:.2f}x.",
        "",
        "## All methods",
        "",
        "| model | input | batch | device | " + " | ".join(methods) + " |",
        "|---|---|---|---|" + "---|" * len(methods),
    ]
    for row in rows:
        rates = row["images_per_second"]
        lines.append(
            f"| {row['model']} | {_shape(row)} | {row['batch_size']} | {row['device']} | "
            + " | ".join(_rate(rates[m]) for m in methods) + " |"
        )
    lines += ["", f"![speed]({SPEED_PNG})", ""]
    return "\n".join(lines)


def _rate(value: float) -> str:
    """Three significant figures or so: 1234, 56.7, 1.23."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _shape(row: dict) -> str:
    return "x".join(str(v) for v in row["input_shape"])


def plot_speed_bars(result: dict, path: Path) -> Path:
    plt = pyplot()
    rows = result["rows"]
    methods = _speed_methods(rows)
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(rows) + 3), 5.5))
    width = 0.8 / len(methods)
    positions = np.arange(len(rows))
    for index, method in enumerate(methods):
        values = [row["images_per_second"][method] for row in rows]
        hatch = "//" if method == speed.PYTORCH_OOD_ALL else None
        ax.bar(positions + index * width, values, width, label=method, hatch=hatch)
    ax.set_xticks(positions + 0.4 - width / 2,
                  [f"{r['model']}\n{r['input_shape'][1]}px b{r['batch_size']}\n{r['device']}" for r in rows], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("images / s (log scale)")
    ax.set_title("Scoring throughput, same model and batches")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speed_console_summary(result: dict) -> str:
    lines = []
    for row in result["rows"]:
        rates = row["images_per_second"]
        lines.append(
            f"{row['model']:>12} {_shape(row):>9} b{row['batch_size']:<4} {row['device']:<5} "
            f"forward {rates[speed.FORWARD]:8.0f}/s  scorer {rates[speed.SCORER]:8.0f}/s  "
            f"scorer+ODIN {rates[speed.SCORER_ODIN]:8.0f}/s  pytorch-ood x5 {rates[speed.PYTORCH_OOD_ALL]:8.0f}/s  "
            f"({speed.speedup(row):.2f}x)"
        )
    return "\n".join(lines)


def write_speed(result: dict, output_dir: Path) -> list[Path]:
    return [
        write_json(result, output_dir / "speed.json"),
        write_text(output_dir / "speed.md", speed_markdown(result)),
        plot_speed_bars(result, output_dir / SPEED_PNG),
    ]
