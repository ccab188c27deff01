"""Per-image scores of a single-model (global-only) directory on a category's test split."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import MVTecDataset
from ..ops.ssim import recon_loss
from ..train import load_model


@torch.no_grad()
def score_test_split(
    model_dir: str | Path,
    data_root: str | Path,
    category: str,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    workers: int = 0,
) -> list[dict]:
    """One row per test image: ``path``, ``defect``, ``label`` (1 = anomalous), ``score``.

    score = s_G = l_r + l_h of ``model_dir/global.pt`` on the image at the model's size
    (SPEC section 1, the global half of s(x)).
    """
    model = load_model(Path(model_dir) / "global.pt", device)
    cfg = model.config
    ds = MVTecDataset(data_root, category, "test", cfg.image_size)
    rows: list[dict] = []
    for b in DataLoader(ds, batch_size=batch_size, num_workers=workers):
        x = b["image"].to(device)
        z, x_hat = model(x)
        s = recon_loss(x.contiguous(), x_hat.float().contiguous(), cfg.rho, cfg.msssim(), "none")
        s = s + model.descriptor.l_h(z)
        for p, d, lab, v in zip(b["path"], b["defect"], b["label"].tolist(), s.cpu().tolist()):
            rows.append({"path": p, "defect": d, "label": int(lab), "score": float(v)})
    return rows
