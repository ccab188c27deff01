"""The results page of ``eval --html`` and ``score --html``: one self-contained HTML file
(metrics, ROC, thresholds and the decision rule, a sortable, filterable table of every
image with its thumbnails) that fetches nothing.

``thumbs`` makes each image's pictures while its map is at hand, ``charts`` the inline
SVG, ``page`` the HTML, ``pages`` the eval and score pages from their reports."""

from .pages import eval_page, score_page
from .thumbs import THUMB_PX, Thumbs, make_thumbs

PAGE_NAME = "report.html"

__all__ = ["PAGE_NAME", "THUMB_PX", "Thumbs", "eval_page", "make_thumbs", "score_page"]
