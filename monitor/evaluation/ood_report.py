"""ood.json, ood.md and the plots of `ood-monitor bench ood` (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from monitor.evaluation import machine
from monitor.evaluation.report import format_number, pyplot, write_json, write_text
from monitor.evaluation.tables import SUPERVISED
from monitor.names import SUMMARY

RANKS_PNG = "ood_average_rank.png"
INTERVALS_PNG = "ood_auroc_intervals.png"
HEATMAP_PNG = "ood_auroc_heatmap.png"
ARCH_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


def _cell(entry: dict, spread: bool = True) -> str:
    text = format_number(entry["value"], 1)
    if spread and entry.get("spread") is not None and math.isfinite(entry["spread"]):
        text += f" ±{entry['spread']:.1f}"
    return f"{text} [{format_number(entry['low'], 1)}, {format_number(entry['high'], 1)}]"


def _rank_cell(entry: dict) -> str:
    return f"{entry['value']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def _label(row: str) -> str:
    return f"**{row}**" if row == SUMMARY else row


def _table_markdown(result: dict, table: dict) -> list[str]:
    archs = list(table["architectures"])
    labels = result["architectures"]
    level = round(100 * table["level"])
    lines = [
        f"## {table['title']}",
        "",
        f"{len(table['rows'])} rows, {len(table['sets'])} sets ({', '.join(table['sets'])}). Every row is scored "
        f"on the same test halves. Intervals: {level} % bootstrap ({table['draws']} draws resampling the seeds "
        "and the test images).",
        "",
        "### Average rank (1 = best among the rows of this table; lower is better)",
        "",
        "| row | " + " | ".join(labels[a] for a in archs) + " | pooled |",
        "|---|" + "---|" * (len(archs) + 1),
    ]
    order = sorted(table["rows"], key=lambda r: table["pooled"]["average_rank"][r]["value"])
    for row in order:
        cells = [_rank_cell(table["architectures"][a]["average_rank"][row]) for a in archs]
        lines.append(f"| {_label(row)} | " + " | ".join(cells) + f" | {_rank_cell(table['pooled']['average_rank'][row])} |")
    goal = result["goals"][table["key"]]
    lines += ["", "Best sample-free row (lowest average rank without the supervised reference):", ""]
    for arch, entry in goal["per_architecture"].items():
        lines.append(
            f"- {labels[arch]}: **{entry['best_sample_free']}**; 1C-Sum {_rank_cell(entry['summary_rank'])}, "
            f"best sample-free row in {100 * entry['summary_best_share']:.0f} % of the draws"
        )
    pooled = table["pooled"]
    lines.append(
        f"- pooled: **{pooled['best_sample_free']}**; 1C-Sum {_rank_cell(pooled['average_rank'][SUMMARY])}, "
        f"best sample-free row in {100 * pooled['summary_best_share']:.0f} % of the draws"
    )
    lines += [
        "",
        f"Goal ({goal['goal']}): **{'met' if goal['met'] else 'not met'}**.",
        "",
        f"### auROC (%), pooled: mean of the {pooled['models']} models ± their spread [{level} % interval]",
        "",
    ]
    lines += _auroc_grid(table, pooled["auroc"])
    for arch in archs:
        entry = table["architectures"][arch]
        lines += [
            "",
            f"### auROC (%), {labels[arch]}: mean of {entry['models']} seeds ± spread [{level} % interval]",
            "",
        ]
        lines += _auroc_grid(table, entry["auroc"])
    if "near_ood" in table:
        lines += [
            "",
            "### Held-out classes (each architecture's held-out-classes model, seed 0)",
            "",
            f"auROC [{level} % interval] and rank among the rows [interval], test halves.",
            "",
            "| row | " + " | ".join(labels.get(a, a) for a in table["near_ood"]) + " |",
            "|---|" + "---|" * len(table["near_ood"]),
        ]
        for row in table["rows"]:
            cells = [
                f"{_cell(e['auroc'][row], spread=False)}, rank {e['rank'][row]['value']:.1f} "
                f"[{e['rank'][row]['low']:.0f}, {e['rank'][row]['high']:.0f}]"
                for e in table["near_ood"].values()
            ]
            lines.append(f"| {_label(row)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _auroc_grid(table: dict, auroc: dict) -> list[str]:
    sets = table["sets"]
    lines = ["| row | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    best = {s: max(auroc[s][r]["value"] for r in table["rows"] if r != SUPERVISED) for s in sets}
    for row in table["rows"]:
        cells = []
        for name in sets:
            text = _cell(auroc[name][row])
            if row != SUPERVISED and math.isclose(auroc[name][row]["value"], best[name]):
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {_label(row)} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [
        "# OOD detection: three architectures, three seeds, the sets available offline",
        "",
        f"Regenerate: `{result.get('command', 'ood-monitor bench ood')}` ({result['seconds']:.0f} s).",
        "",
        f"Machine: {machine.describe_line(result['machine'])}.",
        "",
        f"In-distribution: {result['in_distribution']['size']} {result['in_distribution']['name']} test images "
        f"({result['in_distribution']['source']}), split in halves: the supervised reference (a linear SVM on the "
        f"paper's 18 indicators) learns on one half of the ID images and one half of an OOD set, and every row is "
        f"scored on the other halves ({settings['id_test_half']} ID images). OOD samples are the positives. "
        f"ODIN {'included' if settings['odin'] else 'left out'}.",
        "",
        "## Models",
        "",
        "| model | parameters | test accuracy (%) | accuracy on the ID sample (%) | training (s) |",
        "|---|---|---|---|---|",
    ]
    for model in result["models"]:
        accuracy = model.get("test_accuracy")
        lines.append(
            f"| {model['name']} | {model.get('parameters') or '–'} | "
            f"{format_number(100 * accuracy if accuracy is not None else None, 1)} | {100 * model['accuracy_on_id_sample']:.1f} | "
            f"{model.get('training_seconds') or '–'} |"
        )
    lines += ["", "## OOD sets", ""]
    for s in result["sets"]:
        notes = f"; {s['notes']}" if s.get("notes") else ""
        lines.append(f"- **{s['name']}** ({s['size']}, {s['test_half']} in the test half): {s['source']}{notes}")
    near = result.get("near_ood")
    if near:
        lines.append(
            f"- **{near['name']}** ({near['ood_size']}): the test images of {' and '.join(near['held_out_names'])}, "
            f"against {near['id_size']} test images of the eight other classes, for the models trained without them"
        )
    lines += ["", f"![average rank]({RANKS_PNG})", "", f"![auROC with intervals]({INTERVALS_PNG})", ""]
    for table in result["tables"].values():
        lines += _table_markdown(result, table)
    lines += _stream_markdown(result["stream"])
    return "\n".join(lines) + "\n"


def _stream_markdown(stream: dict) -> list[str]:
    counts = ", ".join(f"{n} {c}" for n, c in stream["ood_per_set"].items())
    lines = [
        f"## Thresholds on a mixed stream (model {stream['model']})",
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
        lines.append(
            f"| {_label(method)} | {_pct(prop.get('precision'))} | {_pct(prop.get('recall'))} | "
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


def plot_ranks(result: dict, path: Path) -> Path:
    """Average rank with its interval, per architecture and pooled, one panel per table."""
    plt = pyplot()
    computed = list(result["tables"].values())
    rows = max(len(t["rows"]) for t in computed)
    fig, axes = plt.subplots(1, len(computed), figsize=(6.5 * len(computed), 0.34 * rows + 1.8), squeeze=False)
    for ax, table in zip(axes[0], computed):
        order = sorted(table["rows"], key=lambda r: table["pooled"]["average_rank"][r]["value"])
        y = np.arange(len(order))[::-1]
        groups = [(result["architectures"][a], table["architectures"][a]) for a in table["architectures"]]
        groups.append(("pooled", table["pooled"]))
        offsets = np.linspace(-0.3, 0.3, len(groups))
        for index, (label, entry) in enumerate(groups):
            ranks = [entry["average_rank"][r] for r in order]
            value = np.array([e["value"] for e in ranks])
            error = np.array([[e["value"] - e["low"] for e in ranks], [e["high"] - e["value"] for e in ranks]])
            colour = "black" if label == "pooled" else ARCH_COLOURS[index % len(ARCH_COLOURS)]
            # A rank's point value (the rank of the mean auROC) may lie just outside its percentile
            # interval: the bar then starts at the point.
            ax.errorbar(value, y + offsets[index], xerr=np.maximum(error, 0), fmt="o" if label == "pooled" else ".",
                        color=colour, label=label, markersize=5 if label == "pooled" else 4, capsize=2, linewidth=1)
        ax.set_yticks(y, order)
        for tick in ax.get_yticklabels():
            if tick.get_text() == SUMMARY:
                tick.set_fontweight("bold")
        ax.set_xlabel(f"average rank over {len(table['sets'])} sets, {round(100 * table['level'])} % interval")
        ax.set_title(table["title"], fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        # The best rows sit at the top with small ranks (left): no point lies in the upper right.
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_intervals(result: dict, path: Path) -> Path:
    """auROC per row with its interval, one panel per set (the extended table, then the held-out classes)."""
    plt = pyplot()
    table = result["tables"]["extended"]
    panels = list(table["sets"]) + (["near"] if "near_ood" in table else [])
    columns = 3
    lines = math.ceil(len(panels) / columns)
    rows = table["rows"]
    fig, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, (0.24 * len(rows) + 1.2) * lines), squeeze=False)
    y = np.arange(len(rows))[::-1]
    for ax, panel in zip(axes.ravel(), panels):
        if panel == "near":
            groups = [(result["architectures"].get(a, a), e["auroc"]) for a, e in table["near_ood"].items()]
            title = result.get("near_ood", {}).get("name", "held-out classes") + " (seed 0)"
        else:
            groups = [(result["architectures"][a], e["auroc"][panel]) for a, e in table["architectures"].items()]
            groups.append(("pooled", table["pooled"]["auroc"][panel]))
            title = panel
        offsets = np.linspace(-0.3, 0.3, len(groups))
        for index, (label, auroc) in enumerate(groups):
            entries = [auroc[r] for r in rows]
            value = np.array([e["value"] for e in entries])
            error = np.array([[e["value"] - e["low"] for e in entries], [e["high"] - e["value"] for e in entries]])
            colour = "black" if label == "pooled" else ARCH_COLOURS[index % len(ARCH_COLOURS)]
            ax.errorbar(value, y + offsets[index], xerr=np.maximum(error, 0), fmt="o" if label == "pooled" else ".",
                        color=colour, label=label, markersize=4, capsize=1.5, linewidth=0.8)
        ax.axvline(50, color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(-2, 102)
        ax.set_yticks(y, rows, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"auROC (%) with {round(100 * table['level'])} % bootstrap intervals; dotted: chance", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_heatmap(result: dict, path: Path) -> Path:
    """Pooled mean auROC of the extended table, the held-out classes (mean of the architectures) last."""
    plt = pyplot()
    table = result["tables"]["extended"]
    rows, sets = table["rows"], list(table["sets"])
    grid = [[table["pooled"]["auroc"][s][r]["value"] for s in sets] for r in rows]
    if "near_ood" in table:
        sets.append("held-out classes")
        for i, row in enumerate(rows):
            grid[i].append(float(np.mean([e["auroc"][row]["value"] for e in table["near_ood"].values()])))
    grid = np.array(grid)
    fig, ax = plt.subplots(figsize=(1.1 * len(sets) + 2.5, 0.36 * len(rows) + 1.5))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(sets)), sets, rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < 60 else "black")
    if "near_ood" in table:
        ax.axvline(len(sets) - 1.5, color="white", linewidth=3)
    ax.set_title("auROC (%), mean of all models; ID = Fashion-MNIST")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def console_summary(result: dict) -> str:
    lines = []
    for key, table in result["tables"].items():
        ranks = table["pooled"]["average_rank"]
        top = ", ".join(f"{r} {ranks[r]['value']:.2f}" for r in sorted(ranks, key=lambda r: ranks[r]["value"])[:6])
        goal = result["goals"][key]
        lines.append(f"{key} table, pooled average rank (best first): {top}")
        lines.append(f"  {goal['goal']}: {'met' if goal['met'] else 'NOT met'} ("
                     + ", ".join(f"{a}: {v['best_sample_free']}" for a, v in goal["per_architecture"].items()) + ")")
    return "\n".join(lines)


def write(result: dict, output_dir: Path) -> list[Path]:
    return [
        write_json(result, output_dir / "ood.json"),
        write_text(output_dir / "ood.md", markdown(result)),
        plot_ranks(result, output_dir / RANKS_PNG),
        plot_intervals(result, output_dir / INTERVALS_PNG),
        plot_heatmap(result, output_dir / HEATMAP_PNG),
    ]
