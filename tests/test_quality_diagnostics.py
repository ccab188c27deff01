"""The quality diagnostics of benchmarks/quality that the results cite: defect_contrast.py's
visibility against a direct numpy computation on a drawn defect, and normals_vs_defects.py's
table against the Scorer's own scores and scikit-learn's AUROC."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"quality_{name}", QUALITY / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_visibility_of_a_drawn_line_equals_numpy(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.normal(120, 10, (64, 64))
    mask = np.zeros((64, 64), bool)
    mask[20:44, 30:33] = True  # a 3-px line
    grey[mask] += 7.0
    img = np.repeat(grey.clip(0, 255).round().astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(img).save(tmp_path / "x.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    contrast, width = _script("defect_contrast").visibility(tmp_path / "x.png", tmp_path / "m.png")
    g = img[..., 0].astype(np.float64)
    yy, xx = np.mgrid[:64, :64]
    # Chebyshev distance to the mask (max-pool dilation is a square structuring element)
    dist = np.full((64, 64), np.inf)
    for y, x in zip(*np.nonzero(mask), strict=True):
        dist = np.minimum(dist, np.maximum(abs(yy - y), abs(xx - x)))
    ring = (dist > 2) & (dist <= 6)
    assert contrast == pytest.approx(abs(g[mask].mean() - g[ring].mean()) / g[ring].std(ddof=1), rel=1e-9)
    assert 0.4 < contrast < 1.0  # +7 grey levels on a texture of std 10
    boundary = mask.sum() - (24 - 2) * 1  # the line's pixels minus its interior (one column, rows 21-42)
    assert width == pytest.approx(2 * mask.sum() / boundary)


def test_normals_vs_defects_ranks_as_the_scorer_and_sklearn(tiny_pair, tmp_path, capsys, monkeypatch):
    from igd_fast import Scorer

    mod = _script("normals_vs_defects")
    root, model = tiny_pair["data"], tiny_pair["model"]
    fig = tmp_path / "f.png"
    monkeypatch.setattr("sys.argv", ["x", str(model), str(root), "synth", "--figure", str(fig)])
    mod.main()
    out = capsys.readouterr().out
    run = json.loads((model / "run.json").read_text())
    scorer = Scorer(str(model))
    base = Path(run["data_root"]) / run["category"]
    val = [p.score for p in scorer.predict([str(base / f) for f in run["val_files"]])]
    test = root / "synth" / "test"
    good = [p.score for p in scorer.predict([str(p) for p in sorted((test / "good").glob("*.png"))])]
    assert f"AUROC {roc_auc_score([0] * len(val) + [1] * len(good), val + good):.3f}" in out
    kinds = [d for d in sorted(test.iterdir()) if d.is_dir() and d.name != "good"]
    assert kinds
    for d in kinds:
        bad = [p.score for p in scorer.predict([str(p) for p in sorted(d.glob("*.png"))])]
        vs_good = roc_auc_score([0] * len(good) + [1] * len(bad), good + bad)
        vs_val = roc_auc_score([0] * len(val) + [1] * len(bad), val + bad)
        assert f"| {d.name} | {len(bad)} | {np.median(bad):.2f} | {vs_good:.3f} | {vs_val:.3f} |" in out
    assert Image.open(fig).size[0] > 0
