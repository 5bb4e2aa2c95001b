"""One global threshold against one threshold per predicted class, on a mixed stream.

Part of `ood-monitor bench ood`: the same shuffled stream as its threshold section (all ID
images plus OOD images drawn evenly from the far-OOD sets), each sample with the class the
model predicts. For each indicator and method (proportion told the true OOD share,
two-means told nothing), the service's own fits (`monitor.thresholds.fit_threshold` and
`fit_class_thresholds`) are judged by the service's own rule (`ClassThresholds.judge`):
the share of ID samples flagged, the share of OOD samples caught, and how evenly the ID
flags spread over the predicted classes. Writes class_thresholds.json, .md
and .png beside ood.json.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from monitor.errors import MonitorError
from monitor.evaluation import datasets, protocol
from monitor.evaluation.report import write_json
from monitor.names import SUMMARY
from monitor.thresholds import ClassThresholds, fit_class_thresholds, fit_threshold

PLOT_PNG = "class_thresholds.png"
JSON_FILE = "class_thresholds.json"
MARKDOWN = "class_thresholds.md"
SHOWN = (SUMMARY, "MP", "ANG++", "DSS")  # the Markdown table; the JSON holds every indicator
LABELLED_SHARE = 0.05  # the labelled variant: this share of the stream carries its true label
# key -> (method, whether labels steer the fit, how the report names it)
METHODS = {
    "proportion": ("proportion", False, "proportion"),
    "two_means": ("two-means", False, "two-means"),
    "two_means_labelled": ("two-means", True, f"two-means, {LABELLED_SHARE:.0%} labelled"),
}
_PREDICTED = "\0predicted class"  # carried through protocol.mixed_stream beside the indicators


def predicted_classes(loaded, image_set: datasets.ImageSet, batch_size: int = 500) -> np.ndarray:
    """The monitored model's class for each image (argmax of the logits), as the Scorer predicts it."""
    inputs = datasets.to_model_input(image_set.images, loaded.preprocessing.input_shape)
    pre = loaded.preprocessing
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    parts = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = ((inputs[start : start + batch_size] - mean) / std).to(loaded.device)
            parts.append(loaded.model(batch).argmax(1).cpu().numpy())
    return np.concatenate(parts).astype(np.int64)


def _judged(flagged: np.ndarray, predicted: np.ndarray, is_ood: np.ndarray, classes: Sequence[int]) -> dict:
    """What one set of thresholds does on the stream."""
    is_id = ~is_ood
    per_class = {}
    for cls in classes:
        members = is_id & (predicted == cls)
        per_class[int(cls)] = float(flagged[members].mean()) if members.any() else math.nan
    shares = np.array([v for v in per_class.values() if math.isfinite(v)])
    mean_share = float(shares.mean()) if shares.size else math.nan
    id_flags = flagged & is_id
    n_id_flags = int(id_flags.sum())
    by_class = np.array([int((id_flags & (predicted == cls)).sum()) for cls in classes])
    top3 = float(np.sort(by_class)[::-1][:3].sum() / n_id_flags) if n_id_flags else math.nan
    n_flagged = int(flagged.sum())
    return {
        "id_flagged_share": float(flagged[is_id].mean()),
        "ood_caught_share": float(flagged[is_ood].mean()) if is_ood.any() else math.nan,
        "precision": float((flagged & is_ood).sum() / n_flagged) if n_flagged else math.nan,
        "flagged_share": n_flagged / flagged.size,
        "id_flagged_share_per_class": per_class,
        # Evenness of the ID flags over the predicted classes: 0 and 1 when perfectly even.
        "class_share_cv": float(shares.std() / mean_share) if shares.size and mean_share > 0 else math.nan,
        "class_share_max": float(shares.max()) if shares.size else math.nan,
        "class_share_min": float(shares.min()) if shares.size else math.nan,
        "top3_classes_share_of_id_flags": top3,
    }


def compare_thresholds(
    values: np.ndarray,
    predicted: np.ndarray,
    is_ood: np.ndarray,
    method: str,
    *,
    ood_share: float,
    min_class_samples: int,
    classes: Sequence[int],
    labels: np.ndarray | None = None,
) -> dict:
    """One indicator, one method: the global threshold and the per-class ones, judged alike.

    Fitted on the finite values (the service refuses NaN in a fit), steered by ``labels``
    (1 OOD, 0 ID, -1 unknown) when given; judged on all, where a NaN is never flagged, as in
    the stream.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    parameters = {"p": ood_share} if method == "proportion" else {}
    known = None if labels is None else labels[finite]
    try:
        overall = fit_threshold(values[finite], method, known, **parameters)
        per_class = fit_class_thresholds(
            values[finite], predicted[finite], method, known, min_class_samples=min_class_samples, **parameters
        )
    except MonitorError as error:
        return {"error": str(error)}
    result = {}
    for name, thresholds in (("global", ClassThresholds(overall.threshold)), ("per_class", per_class.thresholds)):
        result[name] = _judged(thresholds.judge(values, predicted), predicted, is_ood, classes)
        result[name]["thresholds"] = thresholds.to_dict()
    result["per_class"]["classes_with_own_threshold"] = sorted(per_class.classes)
    result["per_class"]["fallbacks"] = {str(k): v for k, v in per_class.fallbacks.items()}
    return result


def stream_comparison(
    id_scores: protocol.Scores,
    id_predicted: np.ndarray,
    ood_scores: Mapping[str, protocol.Scores],
    ood_predicted: Mapping[str, np.ndarray],
    *,
    ood_share: float,
    seed: int,
    min_class_samples: int,
    class_names: Sequence[str] = (),
) -> dict:
    """The mixed stream of `protocol.mixed_stream` (same seed, same draw), with predicted classes."""
    stream, is_ood, counts = protocol.mixed_stream(
        {**id_scores, _PREDICTED: id_predicted},
        {name: {**scores, _PREDICTED: ood_predicted[name]} for name, scores in ood_scores.items()},
        ood_share,
        seed,
    )
    predicted = stream.pop(_PREDICTED).astype(np.int64)
    classes = sorted(set(np.unique(predicted).tolist()) | set(range(len(class_names))))
    # The labelled variant: a random share of the stream carries its true label, as operators would give.
    labelled = np.random.default_rng(seed + 1).random(is_ood.size) < LABELLED_SHARE
    labels = np.where(labelled, is_ood.astype(np.int8), np.int8(-1))
    indicators = {
        indicator: {
            key: compare_thresholds(
                stream[indicator], predicted, is_ood, method,
                ood_share=float(is_ood.mean()), min_class_samples=min_class_samples, classes=classes,
                labels=labels if steered else None,
            )
            for key, (method, steered, _) in METHODS.items()
        }
        for indicator in protocol.ordered_methods(stream)
    }
    return {
        "ood_share": float(is_ood.mean()),
        "id": int((~is_ood).sum()),
        "ood_per_set": counts,
        "min_class_samples": int(min_class_samples),
        "labelled": {"share": LABELLED_SHARE, "ood": int((labelled & is_ood).sum()),
                     "id": int((labelled & ~is_ood).sum())},
        "class_names": list(class_names),
        "id_per_predicted_class": {int(c): int(((predicted == c) & ~is_ood).sum()) for c in classes},
        "ood_per_predicted_class": {int(c): int(((predicted == c) & is_ood).sum()) for c in classes},
        "indicators": indicators,
    }


def section(loaded, in_dist: datasets.ImageSet, far: Sequence[datasets.ImageSet], id_scores: protocol.Scores,
            ood_scores: Mapping[str, protocol.Scores], *, ood_share: float, seed: int,
            min_class_samples: int) -> dict:
    """The benchmark's section: predicted classes of every image, then the comparison."""
    return stream_comparison(
        id_scores,
        predicted_classes(loaded, in_dist),
        ood_scores,
        {s.name: predicted_classes(loaded, s) for s in far},
        ood_share=ood_share,
        seed=seed,
        min_class_samples=min_class_samples,
        class_names=loaded.preprocessing.class_names or (),
    )


# --- report ----------------------------------------------------------------------------------


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100 * value:.1f} %"


def _class_label(comparison: dict, cls) -> str:
    names = comparison.get("class_names") or []
    index = int(cls)
    return names[index] if index < len(names) else f"class {index}"


def _extremes(entry: dict) -> str:
    return f"{_pct(entry.get('class_share_max'))} / {_pct(entry.get('class_share_min'))}"


def _cv(entry: dict) -> str:
    value = entry.get("class_share_cv")
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def markdown(comparison: dict, command: str | None = None) -> str:
    lines = [
        "# One global threshold against thresholds per predicted class",
        "",
        f"Stream: {comparison['id']} ID images plus {sum(comparison['ood_per_set'].values())} OOD ones drawn evenly "
        f"from the far-OOD sets, {100 * comparison['ood_share']:.1f} % OOD, shuffled; every sample "
        "judged by the threshold of the class the model predicts for it. A class gets its own threshold "
        f"with at least {comparison['min_class_samples']} samples in the stream, else the global one.",
        "",
        f"`proportion` is told the true OOD share, `two-means` nothing; in the labelled variant "
        f"{comparison['labelled']['id']} ID and {comparison['labelled']['ood']} OOD samples picked at random "
        "carry their true label and steer the fits (the global one with every label, each class's own "
        "with the labels of that class); the figures include those labelled samples.",
        "",
    ]
    if command:
        lines += [f"Regenerate: `{command}`", ""]
    lines += [
        "ID flagged: share of ID images flagged (false alarms). OOD caught: share of OOD images flagged. "
        "Evenness of the ID flags over the predicted classes: CV, the coefficient of variation of the "
        "per-class ID flagged shares (0 = even), max / min, the largest and the smallest of those shares, and top 3, "
        "the share of all ID flags that fall in the three most flagged classes (3/10 = even).",
        "",
        "| indicator | method | thresholds | ID flagged | OOD caught | precision | CV | max / min | top 3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    shown = [i for i in SHOWN if i in comparison["indicators"]]
    for indicator in shown:
        for key, (_, _, method) in METHODS.items():
            entry = comparison["indicators"][indicator][key]
            if "error" in entry:
                lines.append(f"| {indicator} | {method} | – | {entry['error']} | | | | | |")
                continue
            for name in ("global", "per_class"):
                judged = entry[name]
                label = "global" if name == "global" else f"per class ({len(judged['classes_with_own_threshold'])} own)"
                lines.append(
                    f"| {indicator} | {method} | {label} | {_pct(judged['id_flagged_share'])} | "
                    f"{_pct(judged['ood_caught_share'])} | {_pct(judged['precision'])} | {_cv(judged)} | "
                    f"{_extremes(judged)} | {_pct(judged['top3_classes_share_of_id_flags'])} |"
                )
    if SUMMARY in comparison["indicators"]:
        lines += ["", f"ID flagged share per predicted class, {SUMMARY}:", ""]
        classes = list(comparison["id_per_predicted_class"])
        header = "| thresholds | " + " | ".join(_class_label(comparison, c) for c in classes) + " |"
        lines += [header, "|---|" + "---|" * len(classes)]
        lines.append("| ID images | " + " | ".join(str(comparison["id_per_predicted_class"][c]) for c in classes) + " |")
        lines.append("| OOD images | " + " | ".join(str(comparison["ood_per_predicted_class"][c]) for c in classes) + " |")
        for key, (_, _, method) in METHODS.items():
            entry = comparison["indicators"][SUMMARY][key]
            if "error" in entry:
                continue
            for name in ("global", "per_class"):
                shares = entry[name]["id_flagged_share_per_class"]
                lines.append(f"| {method}, {name.replace('_', ' ')} | "
                             + " | ".join(_pct(shares.get(c)) for c in classes) + " |")
    return "\n".join(lines) + "\n"


def plot(comparison: dict, path: Path, indicator: str = SUMMARY) -> Path | None:
    """ID flagged share per predicted class, global against per class, one panel per method."""
    if indicator not in comparison["indicators"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(comparison["id_per_predicted_class"])
    labels = [_class_label(comparison, c) for c in classes]
    fig, axes = plt.subplots(1, len(METHODS), figsize=(15, 3.8), sharey=False)
    positions = np.arange(len(classes))
    for ax, (key, (_, _, method)) in zip(np.atleast_1d(axes), METHODS.items()):
        entry = comparison["indicators"][indicator][key]
        if "error" in entry:
            ax.set_title(f"{method}: {entry['error']}", fontsize=8)
            continue
        for offset, name, colour in ((-0.2, "global", "tab:grey"), (0.2, "per_class", "tab:blue")):
            shares = entry[name]["id_flagged_share_per_class"]
            heights = [100 * shares.get(c, math.nan) for c in classes]
            caught = entry[name]["ood_caught_share"]
            ax.bar(positions + offset, heights, width=0.4, color=colour,
                   label=f"{name.replace('_', ' ')} (ID {100 * entry[name]['id_flagged_share']:.1f} %, "
                         f"OOD caught {100 * caught:.1f} %)")
        ax.set_xticks(positions, labels, rotation=40, ha="right", fontsize=8)
        ax.set_ylabel("ID images flagged (%)")
        ax.set_title(f"{indicator}, {method}")
        ax.legend(fontsize=7)
    fig.suptitle("Where the false alarms fall: ID flagged share per predicted class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def console_summary(comparison: dict) -> str:
    entry = comparison["indicators"].get(SUMMARY, {}).get("proportion", {})
    if "global" not in entry:
        return "per-class thresholds: no 1C-Sum proportion comparison"
    glob, own = entry["global"], entry["per_class"]
    return (
        f"{SUMMARY}, proportion: global threshold ID flagged {_pct(glob['id_flagged_share'])}, OOD caught "
        f"{_pct(glob['ood_caught_share'])}, class CV {_cv(glob)}; per class ID flagged "
        f"{_pct(own['id_flagged_share'])}, OOD caught {_pct(own['ood_caught_share'])}, class CV {_cv(own)}"
    )


def write(result: dict, output_dir: Path) -> list[Path]:
    """class_thresholds.json, .md and .png from the benchmark's result."""
    comparison = result.get("class_thresholds")
    if not comparison:
        return []
    text_path = output_dir / MARKDOWN
    text_path.write_text(markdown(comparison, result.get("command")))
    data_path = write_json({"command": result.get("command"), "machine": result.get("machine"), **comparison},
                           output_dir / JSON_FILE)
    paths = [data_path, text_path]
    picture = plot(comparison, output_dir / PLOT_PNG)
    return paths + ([picture] if picture else [])
