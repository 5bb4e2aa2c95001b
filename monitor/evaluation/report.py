"""JSON, Markdown and PNG output of the benchmarks (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from monitor.evaluation import machine, speed
from monitor.names import SUMMARY

SUPERVISED = "supervised"
HEATMAP_PNG = "ood_auroc_heatmap.png"
RANKS_PNG = "ood_average_rank.png"
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
    """NaN/inf -> None, so the JSON stays standard."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def write_json(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(_clean(data), indent=2, default=_json_default) + "\n")
    return path


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- OOD --------------------------------------------------------------------------------------


def _columns(result: dict) -> list[dict]:
    """Far-OOD set results, then the near-OOD one when present."""
    columns = list(result["results"])
    near = result.get("near_ood", {})
    if "result" in near:
        columns.append(near["result"])
    return columns


def _methods(result: dict) -> list[str]:
    return list(result["results"][0]["metrics"])


def _table(result: dict, metric: str, digits: int = 1, with_rank: bool = True) -> list[str]:
    columns = _columns(result)
    header = ["indicator"] + [c["name"] for c in columns] + (["avg rank"] if with_rank else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ranks = result["average_rank"]
    best = {c["name"]: max(v["auroc"] if metric == "auroc" else -v["fpr95"] for m, v in c["metrics"].items() if m != SUPERVISED) for c in columns}
    for method in _methods(result):
        cells = []
        for column in columns:
            value = column["metrics"].get(method, {}).get(metric)
            text = _fmt(value, digits)
            key = value if metric == "auroc" else (-value if value is not None else None)
            if method != SUPERVISED and value is not None and key is not None and math.isclose(key, best[column["name"]]):
                text = f"**{text}**"
            cells.append(text)
        label = f"**{method}**" if method == SUMMARY else method
        rank = [_fmt(ranks.get(method), 2)] if with_rank else []
        lines.append("| " + " | ".join([label] + cells + rank) + " |")
    return lines


def ood_markdown(result: dict) -> str:
    settings, model = result["settings"], result["model"]
    goal = result["goals"]["summary_rank_among_indicators"]
    summary = result["summary_rank_among_indicators"]
    lines = [
        "# OOD detection on the sets available offline",
        "",
        f"Regenerate: `{result.get('command', 'ood-monitor bench ood')}` ({result['seconds']:.0f} s).",
        "",
        f"Machine: {machine.describe_line(result['machine'])}.",
        "",
        f"In-distribution: {result['in_distribution']['size']} {result['in_distribution']['name']} test images "
        f"({result['in_distribution']['source']}); model `{model['spec']}` "
        f"(input {'x'.join(str(v) for v in model['input_shape'])}, accuracy {100 * model['test_accuracy_on_id_sample']:.1f} % "
        f"on these images). OOD samples are the positives. ODIN {'included' if settings['odin'] else 'left out'}.",
        "",
        "OOD sets:",
        "",
    ]
    for s in result["sets"]:
        notes = f"; {s['notes']}" if s.get("notes") else ""
        lines.append(f"- **{s['name']}** ({s['size']}): {s['source']}{notes}")
    near = result.get("near_ood", {})
    if "result" in near:
        lines.append(
            f"- **near-OOD** ({near['result']['size']}): model `{near['model']}`, trained without "
            f"{' and '.join(near['held_out_names'])}; ID = {near['id_size']} test images of its eight classes "
            f"(accuracy {100 * near['test_accuracy_on_id_sample']:.1f} %), OOD = the two held-out classes"
        )
    elif near.get("skipped"):
        lines.append(f"- near-OOD split skipped: {near['skipped']}")
    lines += [
        "",
        "## auROC (%)",
        "",
        "Best sample-free indicator per column in bold. `supervised`: logistic regression on all the "
        "standardised indicators, trained on half of the ID and half of that OOD set, evaluated on the "
        "other halves (the paper's ideal reference). avg rank: mean over the far-OOD columns of the rank "
        "by auROC among all rows (1 = best).",
        "",
        *_table(result, "auroc"),
        "",
        f"![auROC heat map]({HEATMAP_PNG}) ![average rank]({RANKS_PNG})",
        "",
        "## FPR at 95 % TPR (%)",
        "",
        "Share of ID images flagged when the threshold catches 95 % of the OOD ones (lower is better).",
        "",
        *_table(result, "fpr95", with_rank=False),
        "",
        "## 1C-Sum's rank among the individual indicators",
        "",
        "| set | rank |",
        "|---|---|",
    ]
    for name, rank in summary["per_set"].items():
        lines.append(f"| {name} | {_fmt(rank, 1)} |")
    if "result" in near:
        lines.append(f"| near-OOD | {_fmt(near['summary_rank_among_indicators'], 1)} |")
    lines += [
        f"| **average (far-OOD)** | **{_fmt(summary['average'], 2)}** |",
        "",
        f"Goal: {goal['goal']}: **{'met' if goal['met'] else 'not met'}** ({_fmt(goal['value'], 2)}).",
        "",
    ]
    lines += _stream_markdown(result["stream"])
    return "\n".join(lines) + "\n"


def _stream_markdown(stream: dict) -> list[str]:
    counts = ", ".join(f"{n} {c}" for n, c in stream["ood_per_set"].items())
    lines = [
        "## Thresholds on a mixed stream",
        "",
        f"Stream: {stream['id']} ID images plus {sum(stream['ood_per_set'].values())} OOD ones drawn evenly "
        f"from the far-OOD sets ({counts}), {100 * stream['ood_share']:.1f} % OOD, shuffled, no labels. "
        "`proportion` is told the true OOD share; `two-means` is told nothing. A value above the "
        "threshold is flagged.",
        "",
        "| indicator | proportion: precision | recall | two-means: precision | recall | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for method, fitted in stream["thresholds"].items():
        prop, two = fitted["proportion"], fitted["two_means"]
        label = f"**{method}**" if method == SUMMARY else method
        lines.append(
            f"| {label} | {_pct(prop.get('precision'))} | {_pct(prop.get('recall'))} | "
            f"{_pct(two.get('precision'))} | {_pct(two.get('recall'))} | {_pct(two.get('flagged_share'))} |"
        )
    lines += [
        "",
        f"1C-Sum alone, on one stream per OOD set ({100 * stream['ood_share']:.0f} % of that set):",
        "",
        "| set | proportion: precision | recall | two-means: precision | recall | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in stream["per_set_summary"].items():
        fitted = entry["thresholds"].get(SUMMARY)
        if not fitted:
            continue
        prop, two = fitted["proportion"], fitted["two_means"]
        lines.append(
            f"| {name} | {_pct(prop.get('precision'))} | {_pct(prop.get('recall'))} | "
            f"{_pct(two.get('precision'))} | {_pct(two.get('recall'))} | {_pct(two.get('flagged_share'))} |"
        )
    return lines + [""]


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100 * value:.1f} %"


def plot_auroc_heatmap(result: dict, path: Path) -> Path:
    plt = _pyplot()
    columns = _columns(result)
    methods = _methods(result)
    grid = np.array([[c["metrics"].get(m, {}).get("auroc", np.nan) for c in columns] for m in methods], dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 2.5, 0.36 * len(methods) + 1.5))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(columns)), [c["name"] for c in columns], rotation=35, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 60 else "black")
    if "result" in result.get("near_ood", {}):  # the near-OOD column has its own model and ID set
        ax.axvline(len(columns) - 1.5, color="white", linewidth=3)
    ax.set_title(f"auROC (%), ID = {result['in_distribution']['name']}, model {result['model']['spec']}")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rank_bars(result: dict, path: Path) -> Path:
    plt = _pyplot()
    ranks = sorted(result["average_rank"].items(), key=lambda item: item[1])
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(ranks) + 1.2))
    colours = ["tab:red" if m == SUMMARY else "tab:grey" if m == SUPERVISED else "tab:blue" for m, _ in ranks]
    ax.barh([m for m, _ in ranks][::-1], [r for _, r in ranks][::-1], color=colours[::-1])
    ax.set_xlabel("average rank over the far-OOD sets (lower is better)")
    ax.set_title("Average auROC rank")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ood_console_summary(result: dict) -> str:
    ranks = result["average_rank"]
    top = ", ".join(f"{m} {r:.2f}" for m, r in sorted(ranks.items(), key=lambda item: item[1])[:6])
    goal = result["goals"]["summary_rank_among_indicators"]
    return f"average rank (best first): {top}\n{goal['goal']}: {'met' if goal['met'] else 'NOT met'} ({goal['value']:.2f})"


def write_ood(result: dict, output_dir: Path) -> list[Path]:
    return [
        write_json(result, output_dir / "ood.json"),
        _write(output_dir / "ood.md", ood_markdown(result)),
        plot_auroc_heatmap(result, output_dir / HEATMAP_PNG),
        plot_rank_bars(result, output_dir / RANKS_PNG),
    ]


def _write(path: Path, text: str) -> Path:
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
    plt = _pyplot()
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
        _write(output_dir / "speed.md", speed_markdown(result)),
        plot_speed_bars(result, output_dir / SPEED_PNG),
    ]
