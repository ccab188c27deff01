"""Training of the defect model (:mod:`igd_fast.models.defect`) on synthetic defects.

Every step draws ``batch_size`` training normals at the working size (the whole image, or
a random crop of ``crop``), flips half of them, draws a synthetic defect
(:mod:`igd_fast.data.defects`) on ``defect_chance`` of them and takes one Adam step on

    focal(logit, mask) + (1 - soft Dice(sigmoid(logit), mask))      the segmentation
    + MSE(repair, clean) + (1 - MS-SSIM(repair, clean))              the repair

(the MS-SSIM through the package's fused kernels, local configuration). The learning
rate follows a cosine from ``lr`` to 0 over ``steps``. A DataLoader worker draws the
defects while the networks run (one worker; none with ``workers=0``). The networks run
in bf16 autocast where the hardware has bf16 (``amp``), weights and losses in fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from ..config import LOCAL
from ..data import imagenet_normalise as normalise
from ..data import open_rgb, working_size
from ..data.defects import draw_defect
from ..metrics.classification import auroc
from ..models.defect import DefectConfig, DefectModel, pixel_maps, residual_weight
from ..ops.ssim import recon_loss

FOCAL_GAMMA = 2.0


def read_working(path: str | Path, long_side: int) -> Tensor:
    """3×H×W uint8 pixels of an image at its working size (bilinear, as the scorer reads)."""
    im = open_rgb(path)
    h, w = working_size(im.size[1], im.size[0], long_side)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


class DefectBatches(IterableDataset):
    """Endless (image with defect, mask, clean image) batches, ImageNet-normalised, from
    uint8 training images of one size; seeded per (seed, worker)."""

    def __init__(self, images: Sequence[Tensor], cfg: DefectConfig, seed: int) -> None:
        self.images, self.cfg, self.seed = list(images), cfg, seed
        h = min(int(t.shape[1]) for t in self.images)
        w = min(int(t.shape[2]) for t in self.images)
        self.crop = (min(cfg.crop, h), min(cfg.crop, w)) if cfg.crop else (h, w)

    def _one(self, gen: torch.Generator, pool: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        img = pool[int(torch.randint(0, len(pool), (), generator=gen))]
        ch, cw = self.crop
        y0 = int(torch.randint(0, img.shape[1] - ch + 1, (), generator=gen))
        x0 = int(torch.randint(0, img.shape[2] - cw + 1, (), generator=gen))
        clean = img[:, y0 : y0 + ch, x0 : x0 + cw]
        clean = clean.flip(2) if float(torch.rand((), generator=gen)) < 0.5 else clean
        if float(torch.rand((), generator=gen)) < self.cfg.defect_chance:
            x, m = draw_defect(clean, pool, gen)
        else:
            x, m = clean, torch.zeros(1, ch, cw)
        return x, m, clean

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        gen = torch.Generator().manual_seed(self.seed * 1009 + (info.id if info is not None else 0))
        pool = [t.float() / 255.0 for t in self.images]
        while True:
            xs, ms, cs = zip(*(self._one(gen, pool) for _ in range(self.cfg.batch_size)), strict=True)
            yield normalise(torch.stack(xs)), torch.stack(ms), normalise(torch.stack(cs))


def segmentation_loss(logit: Tensor, mask: Tensor) -> Tensor:
    """Focal loss (gamma 2) plus 1 - soft Dice, both on the batch."""
    p = torch.sigmoid(logit)
    ce = F.binary_cross_entropy_with_logits(logit, mask, reduction="none")
    pt = p * mask + (1 - p) * (1 - mask)
    focal = (ce * (1 - pt) ** FOCAL_GAMMA).mean()
    dice = (2 * (p * mask).sum() + 1) / (p.sum() + mask.sum() + 1)
    return focal + (1 - dice)


def repair_loss(repair: Tensor, clean: Tensor, backend: str | None = None) -> Tensor:
    """MSE + (1 - MS-SSIM) of the repair against the clean image (fused kernels)."""
    return F.mse_loss(repair, clean) + recon_loss(clean.contiguous(), repair.contiguous(), 0.0, LOCAL, "mean",
                                                  backend)  # fmt: skip


@dataclass
class DefectStep:
    """The losses of one step (floats) and the seconds it took."""

    step: int
    seg: float
    repair: float
    lr: float
    seconds: float


def train_defect_model(
    cfg: DefectConfig,
    images: Sequence[Tensor],
    seed: int = 0,
    workers: int = 1,
    amp: bool = False,
    backend: str | None = None,
    on_step=None,
    device: torch.device | str = "cpu",
) -> tuple[DefectModel, list[DefectStep]]:
    """Train a fresh :class:`DefectModel` on uint8 working-size ``images`` on ``device`` (the
    defects are drawn on the CPU, in a worker). Returns the model (eval mode) and the per-step
    log; ``on_step(DefectStep)`` is called after every step (progress bars, interruption checks)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    model = DefectModel(cfg).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    stream = DataLoader(DefectBatches(images, cfg, seed), batch_size=None, num_workers=workers)
    log: list[DefectStep] = []
    for step, (x, m, clean) in enumerate(stream):
        if step >= cfg.steps:
            break
        t0 = time.perf_counter()
        lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x, m, clean = x.to(device), m.to(device), clean.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logit, repair = model(x.contiguous(memory_format=torch.channels_last))
        seg = segmentation_loss(logit.float(), m)
        rep = repair_loss(repair.float(), clean, backend)
        loss = seg + rep
        if not torch.isfinite(loss):
            raise FloatingPointError(f"defect model: non-finite loss at step {step} (seg {seg}, repair {rep})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        entry = DefectStep(step, float(seg.detach()), float(rep.detach()), lr, time.perf_counter() - t0)
        log.append(entry)
        if on_step is not None:
            on_step(entry)
    return model.eval(), log


# synthetic defects per validation normal when the residual's weight is measured
DEFECTS_PER_NORMAL = 2


@torch.no_grad()
def fit_normaliser(model: DefectModel, normals: Sequence[Tensor], seed: int = 0, amp: bool = False) -> dict:
    """The statistics the scoring part standardises with, from uint8 working-size validation
    normals: the pixel mean / std of the logit and of the repair residual (:func:`pixel_maps`),
    and the residual's weight (:func:`igd_fast.models.defect.residual_weight`) from its pixel
    AUROC on :data:`DEFECTS_PER_NORMAL` synthetic defects drawn on each normal."""
    if not normals:
        raise ValueError("the defect model needs validation normals to standardise its maps (--val-fraction > 0)")
    device = next(model.parameters()).device

    def maps(img: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            lo, r = pixel_maps(model, normalise(img)[None].to(device))
        return lo.flatten().cpu(), r.flatten().cpu()

    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    pool = [t.float() / 255.0 for t in normals]
    logits, resids, scores, masks = [], [], [], []
    for clean in pool:
        lo, r = maps(clean)
        logits.append(lo)
        resids.append(r)
        for _ in range(DEFECTS_PER_NORMAL):
            x, m = draw_defect(clean, pool, gen)
            scores.append(maps(x)[1])
            masks.append(m.flatten() > 0.5)
    lo, r = torch.cat(logits).double(), torch.cat(resids).double()
    m = torch.cat(masks)
    a = auroc(torch.cat(scores).numpy(), m.numpy()) if 0 < int(m.sum()) < m.numel() else 0.5
    return {"logit_mean": float(lo.mean()), "logit_std": float(lo.std().clamp_min(1e-6)),
            "resid_mean": float(r.mean()), "resid_std": float(r.std().clamp_min(1e-6)),
            "resid_weight": residual_weight(a), "resid_auroc": float(a)}  # fmt: skip
