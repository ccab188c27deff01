"""The results page of ``eval --html`` / ``score --html``: one self-contained file that
fetches nothing, one table row per image, every file name escaped; and in a real headless
Chromium (Debian's, as CI installs it): no console errors, no request leaves file://,
sorting by score and the label filters work."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from igd_fast.cli import main
from igd_fast.report_page import PAGE_NAME
from igd_fast.report_page.charts import PAD, TOP, H, W, roc_svg
from igd_fast.report_page.thumbs import outline

CAT = "synth"
# a test image whose name would break out of an attribute or inject markup if not escaped
NASTY = "<img src=x onerror=alert(1)> \"q\" & 'a'.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def pages(tiny_pair, tmp_path_factory):
    """An eval and a score run with --html on the tiny pair's test split (one test image renamed)."""
    root = tmp_path_factory.mktemp("igd_html")
    data = root / "data"
    shutil.copytree(tiny_pair["data"], data)
    good = data / CAT / "test" / "good"
    (good / "000.png").rename(good / NASTY)
    common = ["--model", str(tiny_pair["model"]), "--no-progress", "--device", "cpu", "--workers", "0", "--html"]
    assert main(["eval", *common, "--data", str(data), "--category", CAT, "--out", str(root / "ev")]) == 0
    assert main(["score", *common, "--input", str(data / CAT / "test"), "--out", str(root / "sc")]) == 0
    return {"eval": root / "ev", "score": root / "sc", "n": len(list((data / CAT / "test").rglob("*.png")))}


def _urls(page: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)


@pytest.mark.parametrize("kind", ["eval", "score"])
def test_page_fetches_nothing_and_has_one_row_per_image(pages, kind):
    page = (pages[kind] / PAGE_NAME).read_text()
    assert "http://" not in page and "https://" not in page
    assert "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:;" in page
    for u in _urls(page):  # inline images, or a relative link to the run's own overlay
        assert u.startswith("data:") or (not re.match(r"[a-z]+:", u) and not u.startswith("/")), u
    assert page.count("<tr data-i=") == pages["n"]
    assert len(re.findall(r'src="data:image/(?:webp|jpeg);base64,', page)) == 2 * pages["n"]  # image + heat-map
    # the file name only ever appears escaped
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt; &quot;q&quot; &amp; &#x27;a&#x27;" in page
    if kind == "score":  # each heat-map links to the full-size overlay the run wrote
        links = re.findall(r'<a href="([^"]*)"', page)
        assert len(links) == pages["n"] and all((pages["score"] / _unquote(u)).is_file() for u in links)


def _unquote(u: str) -> str:
    from html import unescape
    from urllib.parse import unquote

    return unquote(unescape(u))


def test_eval_page_shows_the_report(pages):
    page = (pages["eval"] / PAGE_NAME).read_text()
    rep = json.loads((pages["eval"] / "report.json").read_text())
    for k in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max", "accuracy"):
        assert f'<div class="v">{rep[k]:.3f}</div><div class="k">{k}</div>' in page
    assert "<polyline" in page and "threshold_conformal" in page and f"{rep['threshold']:.4g}" in page
    assert "test_normals_check.verdict" in page and rep["test_normals_check"]["verdict"] in page
    assert rep["validation_scores"] and "validation normal" in page  # the threshold's evidence in the histogram


def test_roc_svg_follows_sklearn():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = rng.normal(size=40) + labels
    svg = roc_svg(scores.tolist(), labels.tolist(), 0.5)
    pts = np.array([p.split(",") for p in re.search(r'polyline points="([^"]*)"', svg)[1].split()], dtype=float)
    fpr, tpr = (pts[:, 0] - PAD) / (W - PAD - 10), (H - PAD + 8 - pts[:, 1]) / (H - PAD + 8 - TOP)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-3)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-3)
    assert roc_svg([1.0, 2.0], [0, 0], 1.5) is None  # one class: no curve


def test_outline_is_the_boundary_of_the_mask():
    m = np.zeros((40, 40), bool)
    m[10:30, 10:30] = True
    o = outline(m, (20, 20))  # halved: the square covers 5..14
    ring = np.zeros((20, 20), bool)
    ring[5:15, 5:15] = True
    ring[6:14, 6:14] = False
    np.testing.assert_array_equal(o, ring)
    assert not outline(np.ones((8, 8), bool), (8, 8)).any()  # the image border is not a boundary


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; CI installs it)")
    from playwright.sync_api import sync_playwright  # the test extra's; only the browser may be missing

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, path: Path):
    """The page loaded from file://, with every console error, page error, dialog and
    request that is not file:// recorded (and such requests aborted)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    bad: list[str] = []
    page.on("console", lambda m: bad.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: bad.append(f"page error: {exc}"))
    page.on("dialog", lambda d: (bad.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("requestfailed", lambda r: bad.append(f"request failed: {r.url}"))

    def route(r):
        if r.request.url.startswith("file://"):
            return r.continue_()
        bad.append(f"fetch: {r.request.url}")
        return r.abort()

    page.route("**/*", route)
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, bad


def _visible(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#images tbody tr", "rs => rs.filter(r => !r.hidden).map(r => ({...r.dataset, "
        "imgs: Array.from(r.querySelectorAll('img')).map(i => i.complete && i.naturalWidth > 0)}))")  # fmt: skip


def test_eval_page_in_chromium(browser, pages):
    rep = json.loads((pages["eval"] / "report.json").read_text())
    page, bad = _open(browser, pages["eval"] / PAGE_NAME)
    rows = _visible(page)
    assert len(rows) == len(rep["images"]) == pages["n"]
    assert all(r["imgs"] == [True, True] for r in rows)  # every thumbnail decoded
    page.click("#images th[data-sort=score]")
    scores = [float(r["score"]) for r in _visible(page)]
    assert scores == sorted(scores, reverse=True) and scores != sorted(scores)
    assert page.get_attribute("#images th[data-sort=score]", "aria-sort") == "descending"
    page.click("#images th[data-sort=score]")
    assert [float(r["score"]) for r in _visible(page)] == sorted(scores)
    page.select_option("#f-label", "1")
    assert [r["label"] for r in _visible(page)] == ["1"] * sum(im["label"] for im in rep["images"])
    assert page.inner_text("#shown") == str(sum(im["label"] for im in rep["images"]))
    page.select_option("#f-label", "")
    page.select_option("#f-defect", "good")
    assert {r["defect"] for r in _visible(page)} == {"good"} and len(_visible(page)) == 3
    page.select_option("#f-pred", "0")
    assert len(_visible(page)) == sum(1 for im in rep["images"] if im["defect"] == "good" and im["pred_label"] == 0)
    assert bad == []


def test_score_page_in_chromium(browser, pages):
    page, bad = _open(browser, pages["score"] / PAGE_NAME)
    assert len(_visible(page)) == pages["n"]
    page.click("#images th[data-sort=score]")
    scores = [float(r["score"]) for r in _visible(page)]
    assert scores == sorted(scores, reverse=True)
    page.select_option("#f-pred", "1")
    n_anom = json.loads((pages["score"] / "summary.json").read_text())["n_anomalous"]
    assert [r["pred"] for r in _visible(page)] == ["1"] * n_anom
    assert bad == []
