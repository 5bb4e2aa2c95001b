"""Render a drift report as one self-contained HTML file: every plot and thumbnail is an
inline base64 PNG, so the file can be mailed, archived or opened offline as it is."""

from __future__ import annotations

import base64
import io
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure
from tqdm import tqdm

from monitor.reports.drift import IndicatorDrift

log = logging.getLogger(__name__)

THUMBNAIL_PIXELS = 96
PERIOD_COLOUR = "#d62728"
REFERENCE_COLOUR = "#1f77b4"


@dataclass(frozen=True)
class VolumeBin:
    start: datetime
    count: int
    flagged: int


@dataclass(frozen=True)
class ThresholdPoint:
    activated_at: datetime
    indicator: str
    method: str
    value: float
    sample_count: int
    label_count: int


@dataclass(frozen=True)
class OodSample:
    sample_id: str
    score: float
    received_at: datetime
    label: str | None
    image: bytes | None


@dataclass
class ReportContent:
    period_start: datetime
    period_end: datetime
    reference_start: datetime
    reference_end: datetime
    indicator: str  # the indicator the active threshold applies to
    expected_share: float
    alpha: float
    min_effect: float
    volume: Sequence[VolumeBin]
    period_values: dict[str, np.ndarray]
    reference_values: dict[str, np.ndarray]
    drift: Sequence[IndicatorDrift]
    thresholds: Sequence[ThresholdPoint]
    label_counts: dict[str, int]
    top_ood: Sequence[OodSample]
    generated_at: datetime
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> list[IndicatorDrift]:
        return [entry for entry in self.drift if entry.drifted]

    @property
    def compared(self) -> list[IndicatorDrift]:
        """The indicators that had enough values in both windows to be tested."""
        return [entry for entry in self.drift if entry.statistic is not None]

    @property
    def not_compared_reason(self) -> str:
        """Why no indicator could be tested, in words (empty when at least one was)."""
        if self.compared:
            return ""
        if not any(len(values) for values in self.reference_values.values()):
            return "the reference window holds no scored samples"
        if not any(len(values) for values in self.period_values.values()):
            return "the period holds no scored samples"
        reasons = sorted({entry.reason for entry in self.drift if entry.reason})
        return "; ".join(reasons) or "no indicator has values in both windows"

    @property
    def total(self) -> int:
        return sum(entry.count for entry in self.volume)

    @property
    def flagged(self) -> int:
        return sum(entry.flagged for entry in self.volume)


def render_report(content: ReportContent, *, progress: bool = False) -> str:
    """The HTML text of the report."""
    steps = tqdm(total=5, desc="drift report", unit="part", disable=not progress)
    volume_png = _volume_plot(content)
    steps.update()
    distributions_png = _distribution_plot(content, progress=progress)
    steps.update()
    thresholds_png = _threshold_plot(content)
    steps.update()
    labels_png = _label_plot(content)
    steps.update()
    thumbnails = [
        (sample, _thumbnail(sample.image))
        for sample in tqdm(content.top_ood, desc="thumbnails", unit="img", disable=not progress, leave=False)
    ]
    steps.update()
    steps.close()
    environment = Environment(
        loader=PackageLoader("monitor.reports", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    environment.filters["fmt_p"] = _format_p
    template = environment.get_template("drift_report.html.j2")
    return template.render(
        report=content,
        volume_png=volume_png,
        distributions_png=distributions_png,
        thresholds_png=thresholds_png,
        labels_png=labels_png,
        thumbnails=thumbnails,
    )


def _format_p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _png(figure: Figure, *, tight: bool = True) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight" if tight else None)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _volume_plot(content: ReportContent) -> str:
    figure = Figure(figsize=(10, 4.2))
    count_axes, share_axes = figure.subplots(2, 1, sharex=True)
    starts = [entry.start for entry in content.volume]
    counts = [entry.count for entry in content.volume]
    shares = [entry.flagged / entry.count if entry.count else math.nan for entry in content.volume]
    width = _bar_width(starts)
    count_axes.bar(starts, counts, width=width, color="#7f7f7f", align="edge")
    count_axes.set_ylabel("samples")
    count_axes.set_title("Volume and flagged share over time")
    share_axes.plot(starts, [100 * share for share in shares], marker="o", color=PERIOD_COLOUR, label="flagged")
    share_axes.axhline(100 * content.expected_share, color="black", linestyle="--", label="expected")
    share_axes.set_ylabel("flagged %")
    share_axes.legend(loc="upper left", fontsize="small")
    figure.autofmt_xdate()
    return _png(figure)


def _bar_width(starts: Sequence[datetime]) -> float:
    if len(starts) < 2:
        return 1 / 24
    # Matplotlib dates are in days: bars fill the bin they stand for.
    return (starts[1] - starts[0]).total_seconds() / 86400


def _distribution_plot(content: ReportContent, *, progress: bool) -> str:
    names = [entry.indicator for entry in content.drift]
    columns = 4
    rows = max(1, math.ceil(len(names) / columns))
    figure = Figure(figsize=(12, 2.4 * rows))
    axes_grid = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    by_name = {entry.indicator: entry for entry in content.drift}
    for axes, name in tqdm(
        list(zip(axes_grid, names)), desc="indicator plots", unit="plot", disable=not progress, leave=False
    ):
        current = _finite(content.period_values.get(name))
        baseline = _finite(content.reference_values.get(name))
        both = np.concatenate([current, baseline])
        entry = by_name[name]
        if both.size:
            low, high = np.percentile(both, [0.5, 99.5])
            if not high > low:
                low, high = low - 0.5, high + 0.5
            bins = np.linspace(low, high, 40)
            # Histograms binned by numpy and drawn as stairs: one artist each, not 40 patches.
            if baseline.size:
                density, _ = np.histogram(np.clip(baseline, low, high), bins=bins, density=True)
                axes.stairs(density, bins, fill=True, alpha=0.5, color=REFERENCE_COLOUR, label="reference")
            if current.size:
                density, _ = np.histogram(np.clip(current, low, high), bins=bins, density=True)
                axes.stairs(density, bins, linewidth=1.5, color=PERIOD_COLOUR, label="period")
        if entry.statistic is None:
            subtitle = "not compared"
        else:
            subtitle = f"D={entry.statistic:.2f}  p_adj={_format_p(entry.adjusted_p_value)}"
        axes.set_title(f"{name}\n{subtitle}", fontsize=9,
                       color=PERIOD_COLOUR if entry.drifted else "black",
                       fontweight="bold" if entry.drifted else "normal")
        axes.tick_params(labelsize=7)
        axes.set_yticks([])
    for axes in axes_grid[len(names):]:
        axes.set_visible(False)
    if names:
        axes_grid[0].legend(fontsize="x-small")
    # A fixed layout: tight_layout would draw the 20 panels once more just to measure them.
    figure.subplots_adjust(left=0.02, right=0.98, top=1 - 0.5 / (2.4 * rows), bottom=0.35 / (2.4 * rows),
                           hspace=0.75, wspace=0.12)
    return _png(figure, tight=False)


def _threshold_plot(content: ReportContent) -> str:
    """The threshold in force over the period: the one active at its start, then each re-fit."""
    figure = Figure(figsize=(10, 2.8))
    axes = figure.subplots()
    history = [point for point in content.thresholds
               if point.indicator == content.indicator and point.activated_at < content.period_end]
    before = [point for point in history if point.activated_at <= content.period_start]
    during = [point for point in history if point.activated_at > content.period_start]
    steps = ([(content.period_start, before[-1].value)] if before else []) + [
        (point.activated_at, point.value) for point in during]
    if steps:
        times = [moment for moment, _ in steps] + [content.period_end]
        values = [value for _, value in steps] + [steps[-1][1]]
        axes.step(times, values, where="post", color="black", linewidth=1.5)
        for point in during:
            axes.scatter([point.activated_at], [point.value], color=PERIOD_COLOUR, zorder=3)
            axes.annotate(point.method, (point.activated_at, point.value), fontsize=7,
                          xytext=(-3, 6), textcoords="offset points", ha="right")
        axes.set_xlim(content.period_start, content.period_end)
        low, high = min(values), max(values)
        margin = 0.1 * (high - low) or 0.1 * abs(high) or 1.0
        axes.set_ylim(low - margin, high + margin)
    else:
        axes.text(0.5, 0.5, "no threshold in force during the period", ha="center", va="center",
                  transform=axes.transAxes)
        axes.set_xticks([])
    axes.set_title(f"Threshold in force ({content.indicator})")
    axes.set_ylabel("threshold")
    figure.autofmt_xdate()
    return _png(figure)


def _label_plot(content: ReportContent) -> str:
    figure = Figure(figsize=(5, 2.2))
    axes = figure.subplots()
    names = list(content.label_counts)
    counts = [content.label_counts[name] for name in names]
    axes.barh(names, counts, color=["#2ca02c", PERIOD_COLOUR, "#7f7f7f"][: len(names)])
    for index, count in enumerate(counts):
        axes.text(count, index, f" {count}", va="center", fontsize=8)
    axes.set_title("Operator labels in the period")
    axes.set_xlabel("samples")
    return _png(figure)


def _thumbnail(image: bytes | None) -> str | None:
    """A small PNG data URI of stored image bytes, or None when they cannot be decoded."""
    if not image:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        if image[:6] == b"\x93NUMPY":
            array = np.load(io.BytesIO(image), allow_pickle=False)
            picture = Image.fromarray(_to_uint8(array))
        else:
            picture = Image.open(io.BytesIO(image))
            picture.load()
        picture.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        if picture.mode not in ("L", "RGB", "RGBA"):
            picture = picture.convert("RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as error:
        log.warning("thumbnail skipped: stored image cannot be decoded (%s)", error)
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        scale = 255.0 if float(np.nanmax(array, initial=0)) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    return array


def _finite(values: np.ndarray | None) -> np.ndarray:
    if values is None:
        return np.empty(0)
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]
