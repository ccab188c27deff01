"""The two results pages, from what ``eval`` and ``score`` already report: ``report.json``'s
dict (eval) or ``summary.json``'s dict and the score rows (score), plus each image's
thumbnails. Values in, HTML text out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .charts import histogram_svg, roc_svg
from .page import Card, Row, e, fmt, kv_table, panel, render
from .thumbs import PRED_RGB, TRUE_RGB, Thumbs

# the threshold facts shown beside the decision evidence (report.json / summary.json keys)
THRESHOLD_KEYS = ("threshold", "threshold_rule", "alpha", "n_validation", "score_scale", "pixel_threshold",
                  "pixel_rule", "normalisation")  # fmt: skip
LONG_TEXT = 30  # rule texts longer than this are folded away


def _swatch(rgb: tuple[int, int, int], text: str) -> str:
    return f'<i style="color:rgb{rgb}">━ {e(text)}</i>'


def _legend(truth: bool) -> str:
    marks = [_swatch(PRED_RGB, "pred_mask outline")] + ([_swatch(TRUE_RGB, "ground-truth outline")] if truth else [])
    return ("Image: " + ", ".join(marks) + ". Heat-map: the anomaly map on the run's colour scale (blue low, "
            "red high). Click a column name to sort, choose in the lists to filter.")  # fmt: skip


def decision_panel(rec: Mapping) -> str:
    """The thresholds, the rules that set them and their evidence (``decision``); the rules'
    long texts folded away below the numbers."""
    pairs = [(k, rec.get(k)) for k in THRESHOLD_KEYS if k in rec]
    pairs += [(k, v) for k, v in (rec.get("decision") or {}).items()]
    # eval's check of the image rule's promise on the test normals
    pairs += [(f"test_normals_check.{k}", v) for k, v in (rec.get("test_normals_check") or {}).items()]
    long = [(k, v) for k, v in pairs if isinstance(v, str) and len(v) > LONG_TEXT]
    short = [(k, v) for k, v in pairs if (k, v) not in long]
    rule = ("pred_label = 1 (anomalous) when score > threshold; pred_score = 0.5 at the threshold; "
            "pred_mask = the pixels whose map value > pixel_threshold.")  # fmt: skip
    half = (len(short) + 1) // 2
    body = f'<p class="legend">{e(rule)}</p><div class="kv2">{kv_table(short[:half])}{kv_table(short[half:])}</div>'
    if long:
        body += f"<details><summary>the rules in full</summary>{kv_table(long)}</details>"
    return panel("Thresholds and decision rule", body, "rules")


def _name(path: str, base: str | None) -> str:
    """``path`` relative to ``base`` where it lies below it, else as given."""
    if base:
        rel = os.path.relpath(path, base)
        if not rel.startswith(".."):
            return rel
    return path


def _three(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _metric_cards(report: Mapping, keys: Sequence[str]) -> list[Card]:
    why = report.get("undefined") or {}
    cards = [Card(k, _three(report.get(k)), why.get(k)) for k in keys if k in report]
    return cards + [Card("test images", f"{report['n_normal']} normal / {report['n_anomalous']} anomalous")]


def eval_page(report: Mapping, thumbs: Sequence[Thumbs | None], metric_keys: Sequence[str]) -> str:
    """The page of an ``eval`` run: ``report`` is report.json's dict, ``thumbs`` follow
    ``report['images']``; ``metric_keys`` the metrics shown on top, in order."""
    images = report["images"]
    root = report.get("data_root")
    rows = [Row(_name(im["path"], root), im["score"], im["pred_score"], im["pred_label"], t, im["label"],
                im["defect"]) for im, t in zip(images, thumbs, strict=True)]  # fmt: skip
    scores, labels = [r.score for r in rows], [r.label for r in rows]
    panels = []
    if rows:
        roc = roc_svg(scores, labels, report["threshold"]) or "<p>undefined: the test split has one class only</p>"
        per_defect = [(d, f"{_three(v.get('image_AUROC_vs_good'))} (n={v['n']})")
                      for d, v in (report.get("per_defect") or {}).items()]  # fmt: skip
        if per_defect:
            roc += '<p class="legend">image AUROC of each defect type against good:</p>' + kv_table(per_defect)
        panels.append(panel("Image ROC", roc))
        val = list(report.get("validation_scores") or [])  # the threshold's evidence, beside the test scores
        panels.append(panel("Scores", histogram_svg([*scores, *val], [*labels, *[2] * len(val)],
                                                    ["test normal", "test anomalous", "validation normal"],
                                                    report["threshold"])))  # fmt: skip
    panels += [decision_panel(report), *_skipped(report.get("skipped") or [])]
    title = f"igd-fast eval: {report.get('category', '')}"
    sub = f"model {report.get('model', '')} · data {root or ''} · {report.get('device', '')}"
    legend = _legend(report.get("pixel_AUROC") is not None)  # no pixel metrics: no masks to outline
    return render(title, sub, _metric_cards(report, metric_keys), panels, rows, True, legend)


def score_page(summary: Mapping, rows: Sequence[Mapping], thumbs: Mapping[int, Thumbs], base: str | None) -> str:
    """The page of a ``score`` run: ``summary`` is summary.json's dict, ``rows`` the
    scores.csv rows (with their ``index``), ``thumbs`` by that index."""
    table = [Row(_name(r["path"], base), r["score"], r["pred_score"], r["pred_label"], thumbs.get(r["index"]))
             for r in rows]  # fmt: skip
    n_anom = sum(r.pred_label for r in table)
    cards = [Card("scored", str(len(table))), Card("anomalous (pred_label 1)", str(n_anom)),
             Card("normal (pred_label 0)", str(len(table) - n_anom)), Card("skipped", str(summary.get("n_skipped", 0))),
             Card("threshold", fmt(summary.get("threshold")), summary.get("threshold_rule"))]  # fmt: skip
    panels = []
    if table:
        hist = histogram_svg([r.score for r in table], [r.pred_label for r in table], ["pred normal", "pred anomalous"],
                             summary["threshold"])  # fmt: skip
        panels.append(panel("Scores", hist))
    panels += [decision_panel(summary), *_skipped(summary.get("skipped") or [])]
    sub = f"model {summary.get('model', '')} · input {summary.get('input', '')} · {summary.get('device', '')}"
    return render("igd-fast score", sub, cards, panels, table, False, _legend(False))


def _skipped(skipped: Sequence[Mapping]) -> list[str]:
    if not skipped:
        return []
    return [panel(f"Skipped ({len(skipped)})", kv_table([(s["path"], s["error"]) for s in skipped]))]
