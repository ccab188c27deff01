"""Pixel-level metrics: pooled pixel AUROC and F1Max, mean per-anomalous-image pixel AUROC, AUPRO."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .classification import ArrayLike, auroc, f1_max, trapezoid
from .components import label_components

MapsLike = ArrayLike | list


def _as_tensor(x) -> Tensor:
    return (x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))).detach().cpu()


def _pairs(maps: MapsLike, masks: MapsLike) -> list[tuple[Tensor, Tensor]]:
    """(map, mask) per image: H×W float maps and bool masks.

    Accepts N×H×W / N×1×H×W arrays or lists of H×W (or 1×H×W) arrays whose sizes may
    differ from image to image (maps at each image's original resolution).
    """
    if isinstance(maps, list | tuple) != isinstance(masks, list | tuple):
        maps, masks = list(maps), list(masks)
    if not isinstance(maps, list | tuple):
        a, g = _as_tensor(maps), _as_tensor(masks)
        if a.dim() == 2:
            a, g = a[None], g[None]
        maps, masks = list(a.reshape(-1, *a.shape[-2:])), list(g.reshape(-1, *g.shape[-2:]))
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    if not maps:
        raise ValueError("no images")
    out = []
    for i, (m, k) in enumerate(zip(maps, masks, strict=True)):
        m, k = _as_tensor(m), _as_tensor(k)
        m = m.reshape(m.shape[-2:]) if m.dim() == 3 and m.shape[0] == 1 else m
        k = k.reshape(k.shape[-2:]) if k.dim() == 3 and k.shape[0] == 1 else k
        if m.shape != k.shape or m.dim() != 2:
            raise ValueError(f"image {i}: map {tuple(m.shape)} and mask {tuple(k.shape)} must be the same H×W")
        # keep float64 maps exact; anything else (fp16, bf16, ints) is scored in float32
        out.append((m if m.dtype == torch.float64 else m.float(), k > 0))
    return out


def pixel_auroc(maps: MapsLike, masks: MapsLike) -> float:
    """AUROC over all pixels of all images pooled together (the standard pixel AUROC)."""
    pairs = _pairs(maps, masks)
    return auroc(torch.cat([m.reshape(-1) for m, _ in pairs]), torch.cat([k.reshape(-1) for _, k in pairs]))


def pixel_f1_max(maps: MapsLike, masks: MapsLike) -> tuple[float, float]:
    """(F1Max, its threshold) over all pixels of all images pooled (anomalib's pixel_F1Max)."""
    pairs = _pairs(maps, masks)
    return f1_max(torch.cat([m.reshape(-1) for m, _ in pairs]), torch.cat([k.reshape(-1) for _, k in pairs]))


def per_image_pixel_auroc(maps: MapsLike, masks: MapsLike) -> float:
    """Mean over anomalous images of each image's pixel AUROC (the IGD paper's number).

    Only images whose mask has both anomalous and normal pixels count: on a normal
    image (or a fully anomalous one) the pixel AUROC is undefined.
    """
    vals = []
    for m, k in _pairs(maps, masks):
        if 0 < int(k.sum()) < k.numel():
            vals.append(auroc(m.reshape(-1), k.reshape(-1)))
    if not vals:
        raise ValueError("no image has both anomalous and normal pixels")
    return float(np.mean(vals))


def pro_curve(maps: MapsLike, masks: MapsLike) -> tuple[Tensor, Tensor]:
    """(fpr, pro) over every distinct threshold, from (0, 0) to (1, 1).

    PRO at a threshold is the overlap of the thresholded map with each connected
    ground-truth region (8-connectivity), averaged over all regions of all images;
    FPR is the fraction of normal pixels above the threshold. Computed exactly as the
    MVTec AD evaluation code does: one sort of all pixels, each normal pixel adding
    1/#normal to the FPR and each pixel of region r adding 1/(|r|·#regions) to PRO.
    """
    pairs = _pairs(maps, masks)
    flat, n_regions = [], 0
    for _, k in pairs:
        if k.any():
            lab, n = label_components(k)
            flat.append(torch.where(lab > 0, lab + n_regions, 0).reshape(-1))
            n_regions += n
        else:
            flat.append(torch.zeros(k.numel(), dtype=torch.int64))
    flat_lab = torch.cat(flat)
    n_ok = int((flat_lab == 0).sum())
    if n_regions == 0 or n_ok == 0:
        raise ValueError("AUPRO needs at least one anomalous region and one normal pixel")
    sizes = torch.bincount(flat_lab, minlength=n_regions + 1).to(torch.float64)
    pro_step = torch.where(flat_lab > 0, 1.0 / (sizes[flat_lab] * n_regions), 0.0)
    fp_step = (flat_lab == 0).to(torch.float64) / n_ok
    scores = torch.cat([m.reshape(-1) for m, _ in pairs])
    s_sorted, order = torch.sort(scores, descending=True)
    fpr = torch.cumsum(fp_step[order], 0)
    pro = torch.cumsum(pro_step[order], 0)
    # one point per distinct score: its last occurrence
    keep = torch.ones_like(s_sorted, dtype=torch.bool)
    keep[:-1] = s_sorted[1:] != s_sorted[:-1]
    fpr = fpr[keep].clamp(max=1.0)
    pro = pro[keep].clamp(max=1.0)
    zero, one = fpr.new_zeros(1), fpr.new_ones(1)
    return torch.cat([zero, fpr, one]), torch.cat([zero, pro, one])


def aupro(maps: MapsLike, masks: MapsLike, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit`` FPR, divided by ``fpr_limit`` (in [0, 1])."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    return trapezoid(fpr, pro, x_max=fpr_limit) / fpr_limit
