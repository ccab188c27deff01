"""Per-image scores of a single-model (global-only) directory on a category's test split."""

from __future__ import annotations

from pathlib import Path

from ..data import list_test_samples
from ..score import Failure, Scorer


def score_test_split(
    model_dir: str | Path,
    data_root: str | Path,
    category: str,
    device: str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    latent_weight: float = 1.0,
) -> list[dict]:
    """One row per test image: ``path``, ``defect``, ``label`` (1 = anomalous), ``score``.

    Scored by :class:`igd_fast.score.Scorer`; a directory holding only ``global.pt``
    gives s = s_G = l_r + l_h of the global model (SPEC section 1); ``latent_weight``
    scales the latent term (the Scorer option of the same name).
    """
    samples = list_test_samples(data_root, category)
    scorer = Scorer(model_dir, device, batch_size=batch_size, latent_weight=latent_weight)
    rows: list[dict] = []
    for s, r in zip(samples, scorer.score_paths([x.path for x in samples], workers, want_maps=False)):
        if isinstance(r, Failure):
            raise ValueError(f"cannot score test image {r.path}: {r.error}")
        rows.append({"path": str(s.path), "defect": s.defect, "label": s.label, "score": float(r.score)})
    return rows
