"""Server-side SVG charts: the pages need no chart library and no JavaScript to draw.

Each function takes plain numbers and returns an SVG string; every text that reaches the
markup is escaped here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

from monitor.store.records import RateBucket

WIDTH, HEIGHT = 760, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 56, 16, 36


@dataclass(frozen=True)
class ThresholdMark:
    value: float
    label: str
    active: bool = False
    proposed: bool = False  # waiting for an admin, or asked about in the what-if form


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= value (axis tops)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _format_number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.1f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.0f}k"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.3g}"
    return f"{value:.3g}"


def _grid_row(y: float, value: float) -> list[str]:
    """A horizontal grid line across the plot at height y, labelled with `value` on the left axis."""
    return [
        f'<line class="grid" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>',
        f'<text class="axis" x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_format_number(value)}</text>',
    ]


def _svg_open(title: str, role_label: str) -> list[str]:
    return [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(role_label)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]


def _empty(title: str, message: str) -> str:
    parts = _svg_open(title, title)
    parts.append(
        f'<text class="chart-empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">{escape(message)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def volume_chart(buckets: Sequence[RateBucket], bucket_label: str) -> str:
    """Bars: samples scored per bucket (left axis). Line: flagged share (right axis, %)."""
    title = f"Samples scored per {bucket_label} and flagged share"
    if not buckets:
        return _empty(title, "No samples scored in this window")
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top_volume = _nice_ceiling(max(bucket.total for bucket in buckets))
    top_share = _nice_ceiling(max(bucket.rate for bucket in buckets) * 100) or 1.0
    slot = plot_w / len(buckets)
    bar_w = max(1.0, slot * 0.72)
    parts = _svg_open(title, title)
    # Grid and axes labels: 4 horizontal lines.
    for step in range(5):
        y = MARGIN_TOP + plot_h * (1 - step / 4)
        parts += _grid_row(y, top_volume * step / 4)
        parts.append(
            f'<text class="axis share" x="{WIDTH - MARGIN_RIGHT + 6}" y="{y + 4:.1f}">'
            f"{_format_number(top_share * step / 4)}%</text>"
        )
    points: list[str] = []
    runs: list[list[str]] = []
    for index, bucket in enumerate(buckets):
        x = MARGIN_LEFT + index * slot + (slot - bar_w) / 2
        height = plot_h * bucket.total / top_volume
        flagged_height = plot_h * bucket.flagged / top_volume
        y = MARGIN_TOP + plot_h - height
        tip = (
            f"{bucket.start:%Y-%m-%d %H:%M}: {bucket.total} scored, {bucket.flagged} flagged "
            f"({bucket.rate * 100:.1f}%)"
        )
        parts.append(
            f'<g><title>{escape(tip)}</title>'
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{height:.1f}"/>'
            f'<rect class="bar flagged" x="{x:.1f}" y="{MARGIN_TOP + plot_h - flagged_height:.1f}" '
            f'width="{bar_w:.1f}" height="{flagged_height:.1f}"/></g>'
        )
        if bucket.total:
            share_y = MARGIN_TOP + plot_h * (1 - bucket.rate * 100 / top_share)
            points.append(f"{x + bar_w / 2:.1f},{share_y:.1f}")
        elif points:  # no samples, no share: the line breaks instead of dropping to 0 %
            runs.append(points)
            points = []
    runs.append(points)
    for run in runs:
        if len(run) == 1:
            x, y = run[0].split(",")
            parts.append(f'<circle class="dot share" cx="{x}" cy="{y}" r="2.5"/>')
        elif run:
            parts.append(f'<polyline class="line share" points="{" ".join(run)}"/>')
    # A handful of time labels along the bottom.
    label_every = max(1, math.ceil(len(buckets) / 6))
    for index in range(0, len(buckets), label_every):
        x = MARGIN_LEFT + index * slot + slot / 2
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle">'
            f"{buckets[index].start:%m-%d %H:%M}</text>"
        )
    parts.append(
        f'<text class="legend" x="{MARGIN_LEFT}" y="{HEIGHT - 4}"><tspan class="swatch">■</tspan> scored</text>'
        f'<text class="legend" x="{MARGIN_LEFT + 80}" y="{HEIGHT - 4}"><tspan class="swatch flagged">■</tspan> flagged</text>'
        f'<text class="legend" x="{MARGIN_LEFT + 160}" y="{HEIGHT - 4}"><tspan class="swatch share">—</tspan> '
        f"flagged share (right axis)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(
    edges: Sequence[float], counts: Sequence[int], marks: Sequence[ThresholdMark], indicator: str
) -> str:
    """Score distribution as bars, each fitted threshold as a vertical line with its label."""
    title = f"Distribution of {indicator} in the window, with fitted thresholds"
    if not counts or sum(counts) == 0:
        return _empty(title, "No scores in this window")
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    low, high = float(edges[0]), float(edges[-1])
    span = (high - low) or 1.0
    top = _nice_ceiling(max(counts))

    def x_of(value: float) -> float:
        return MARGIN_LEFT + plot_w * (min(max(value, low), high) - low) / span

    parts = _svg_open(title, title)
    for step in range(5):
        y = MARGIN_TOP + plot_h * (1 - step / 4)
        parts += _grid_row(y, top * step / 4)
    for index, count in enumerate(counts):
        x0, x1 = x_of(edges[index]), x_of(edges[index + 1])
        height = plot_h * count / top
        tip = f"{edges[index]:.4g} to {edges[index + 1]:.4g}: {count}"
        parts.append(
            f'<rect class="bar" x="{x0:.1f}" y="{MARGIN_TOP + plot_h - height:.1f}" '
            f'width="{max(0.5, x1 - x0 - 0.5):.1f}" height="{height:.1f}"><title>{escape(tip)}</title></rect>'
        )
    for tick in range(6):
        value = low + span * tick / 5
        parts.append(
            f'<text class="axis" x="{x_of(value):.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" '
            f'text-anchor="middle">{_format_number(value)}</text>'
        )
    # Inactive first, then proposed ones, so the active threshold is drawn on top.
    for rank, mark in enumerate(sorted(marks, key=lambda m: (m.active, m.proposed))):
        x = x_of(mark.value)
        css = "threshold active" if mark.active else "threshold proposed" if mark.proposed else "threshold"
        label_y = MARGIN_TOP + 12 + 14 * (rank % 4)
        anchor = "end" if x > MARGIN_LEFT + plot_w * 0.8 else "start"
        offset = -4 if anchor == "end" else 4
        parts.append(
            f'<g class="{css}"><title>{escape(mark.label)} = {mark.value:.6g}</title>'
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_TOP}" y2="{MARGIN_TOP + plot_h}"/>'
            f'<text x="{x + offset:.1f}" y="{label_y}" text-anchor="{anchor}">{escape(mark.label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
