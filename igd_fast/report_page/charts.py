"""Inline SVG charts of a run's scores: the image ROC curve with the operating point at the
threshold, and the score histogram with the threshold. Numbers in, SVG text out."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

W, H, PAD, TOP = 300, 240, 40, 24  # the plot box inside a W×H picture: PAD left and below, TOP above
COLOURS = ("#3b75c4", "#d2452f", "#7a7a7a")


def _svg(body: str, label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="{escape(label)}">{body}</svg>')  # fmt: skip


def _axes(xlabel: str, ylabel: str, xticks: list[tuple[float, str]], yticks: list[tuple[float, str]]) -> str:
    """The frame, ticks and labels of a plot whose data run over [0, 1]² (via :func:`_xy`)."""
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    parts = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" class="frame"/>']
    for v, t in xticks:
        x, _ = _xy(v, 0)
        parts.append(f'<text x="{x}" y="{y0 + 14}" class="tick" text-anchor="middle">{escape(t)}</text>')
    for v, t in yticks:
        _, y = _xy(0, v)
        parts.append(f'<text x="{x0 - 4}" y="{y + 4}" class="tick" text-anchor="end">{escape(t)}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2}" y="{H - 4}" class="axis" text-anchor="middle">{escape(xlabel)}</text>')
    parts.append(f'<text x="10" y="{(y0 + y1) / 2}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 10 {(y0 + y1) / 2})">{escape(ylabel)}</text>')  # fmt: skip
    return "".join(parts)


def _xy(u: float, v: float) -> tuple[float, float]:
    """Picture coordinates of the unit-square point (u, v), v upwards."""
    return round(PAD + u * (W - PAD - 10), 2), round(H - PAD + 8 - v * (H - PAD + 8 - TOP), 2)


def roc_svg(scores: Sequence[float], labels: Sequence[int], threshold: float) -> str | None:
    """The ROC curve of ``scores`` against ``labels`` (1 = anomalous), the chance diagonal
    and the point the threshold gives (score > threshold); None with one class only."""
    from ..metrics import roc_curve

    try:
        fpr, tpr, _ = roc_curve(list(scores), list(labels))
    except ValueError:
        return None
    pts = " ".join("{},{}".format(*_xy(float(f), float(t))) for f, t in zip(fpr, tpr, strict=True))
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    op = _xy(float((s[y == 0] > threshold).mean()), float((s[y == 1] > threshold).mean()))
    ticks = [(v, f"{v:g}") for v in (0, 0.25, 0.5, 0.75, 1)]
    body = (_axes("false positive rate", "true positive rate", ticks, ticks)
            + '<line x1="{}" y1="{}" x2="{}" y2="{}" class="chance"/>'.format(*_xy(0, 0), *_xy(1, 1))
            + f'<polyline points="{pts}" class="roc"/>'
            + f'<circle cx="{op[0]}" cy="{op[1]}" r="4.5" class="op"><title>at the threshold</title></circle>'
            )  # fmt: skip
    return _svg(body, "image ROC curve")


def histogram_svg(scores: Sequence[float], groups: Sequence[int], names: Sequence[str], threshold: float,
                  bins: int = 30) -> str:  # fmt: skip
    """Overlaid histograms of ``scores`` per group (``groups[i]`` indexes
    ``names``), with a dashed line at the threshold."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    edges = np.histogram_bin_edges(np.r_[s, threshold], bins=bins)
    counts = [np.histogram(s[g == k], bins=edges)[0] for k in range(len(names))]
    top = max(1, max(int(c.max()) if c.size else 0 for c in counts))
    lo, span = edges[0], max(edges[-1] - edges[0], 1e-12)
    bars = []
    for k, c in enumerate(counts):
        for i, n in enumerate(c):
            if n:
                (xa, ya), (xb, yb) = _xy((edges[i] - lo) / span, n / top), _xy((edges[i + 1] - lo) / span, 0)
                bars.append(f'<rect x="{xa}" y="{ya}" width="{round(xb - xa, 2)}" height="{round(yb - ya, 2)}" '
                            f'fill="{COLOURS[k % 3]}" fill-opacity="0.6"/>')  # fmt: skip
    tx = _xy((threshold - lo) / span, 0)[0]
    xt = [((v - lo) / span, f"{v:.3g}") for v in np.linspace(edges[0], edges[-1], 4)]
    body = (_axes("score", "images", xt, [(0, "0"), (1, str(top))]) + "".join(bars)
            + f'<line x1="{tx}" y1="{_xy(0, 1)[1]}" x2="{tx}" y2="{_xy(0, 0)[1]}" class="thr">'
            f"<title>threshold {threshold:.6g}</title></line>" + _legend(names))  # fmt: skip
    return _svg(body, "score histogram")


def _legend(names: Sequence[str]) -> str:
    """One row of keys above the plot."""
    x, yy, out = float(PAD), TOP / 2, []
    for k, name in enumerate([*names, "threshold"]):
        mark = (f'<line x1="{x}" y1="{yy}" x2="{x + 10}" y2="{yy}" class="thr"/>' if k == len(names) else
                f'<rect x="{x}" y="{yy - 5}" width="10" height="10" fill="{COLOURS[k % 3]}" fill-opacity="0.6"/>')
        out.append(mark + f'<text x="{x + 14}" y="{yy + 4}" class="tick">{escape(name)}</text>')
        x += 22 + 5.5 * len(name)
    return "".join(out)
