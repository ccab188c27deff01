"""benchmarks/report.py: speed-up rows from pytest-benchmark JSON, one run or ranges over
several (the README's tables come from it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_report", Path(__file__).parents[1] / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)


def _run(tmp_path: Path, name: str, ours_s: float, peer_s: float) -> Path:
    """A pytest-benchmark file with one group: ours and a peer with a 10× target."""
    data = {
        "machine_info": {"cpu": {"brand_raw": "Test CPU"}},
        "benchmarks": [
            {"group": "g", "name": "t[ours]", "stats": {"median": ours_s},
             "extra_info": {"role": "ours", "entry": "ours"}},
            {"group": "g", "name": "t[peer]", "stats": {"median": peer_s},
             "extra_info": {"role": "peer", "entry": "peer", "target": 10.0}},
        ],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_one_run_ratio_and_exit_status(tmp_path, capsys):
    assert report.main([str(_run(tmp_path, "a.json", 0.010, 0.120))]) == 0
    assert "12.0x" in capsys.readouterr().out
    assert report.main([str(_run(tmp_path, "b.json", 0.010, 0.080)), "--markdown"]) == 1
    assert "| NO |" in capsys.readouterr().out


def test_ranges_over_runs(tmp_path, capsys):
    files = [str(_run(tmp_path, f"r{i}.json", o, p)) for i, (o, p) in enumerate([(0.010, 0.120), (0.020, 0.150),
                                                                                 (0.010, 0.090)])]
    rows = report.ranges([report.rows(json.loads(Path(f).read_text())) for f in files])
    assert len(rows) == 1
    r = rows[0]
    assert r["ours_median_s"] == (0.010, 0.020) and r["peer_median_s"] == (0.090, 0.150)
    assert r["ratio"] == pytest.approx((7.5, 12.0)) and r["median_ratio"] == pytest.approx(9.0)
    assert (r["met"], r["runs"]) == (1, 3)
    assert report.main([*files, "--markdown"]) == 1  # a run missed the target
    out = capsys.readouterr().out
    assert "7.5-12.0x" in out and "1 of 3" in out and "3 runs" in out
    assert report.main(files[:1] * 2) == 0
