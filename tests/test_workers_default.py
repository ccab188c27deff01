"""The DataLoader worker defaults: scoring reads in the main process on 2 cores."""

from __future__ import annotations

import pytest

from igd_fast import _dist


@pytest.mark.parametrize(("cores", "train", "score"), [(1, 1, 0), (2, 1, 0), (4, 2, 2), (8, 4, 4), (64, 4, 4)])
def test_worker_defaults(monkeypatch, cores, train, score):
    monkeypatch.setattr(_dist, "available_cores", lambda: cores)
    assert _dist.default_workers() == train
    assert _dist.default_score_workers() == score
