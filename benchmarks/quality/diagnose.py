"""Where does a trained model's score lose? Splits each model's term into l_r and l_h,
scores them separately on the test split (image AUROC of each part), compares the
reconstruction error of training, validation and test normals, and measures the pixel
AUROC of the global map, the local map, their sum, the smoothed sum and shifted sums
(a map that is offset scores best shifted).

    python benchmarks/quality/diagnose.py MODEL_DIR DATA_ROOT CATEGORY [--out diag.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from igd_fast.checkpoint import validation_files
from igd_fast.data import list_train_files, load_mask, resolve_layout
from igd_fast.metrics import auroc, pixel_auroc
from igd_fast.models.terms import latent_term, recon_term
from igd_fast.ops.patches import extract_patches
from igd_fast.score import Scorer
from igd_fast.score.maps import gaussian_smooth


@torch.inference_mode()
def parts(scorer: Scorer, paths: list) -> dict[str, list]:
    """Per image: global l_r, l_h; local max l_r, max l_h, and the l_r, l_h of the patch
    with the largest l_r + l_h; the global and local maps at the original size."""
    out: dict[str, list] = {k: [] for k in ("g_lr", "g_lh", "l_lr_max", "l_lh_max", "l_lr_at", "l_lh_at", "maps")}
    for batch in scorer.loader(paths):
        x = batch.images.float()
        maps = []
        if scorer.global_model is not None:
            m = scorer.global_model
            z, xh = m(x)
            out["g_lr"] += recon_term(m, x, xh).tolist()
            out["g_lh"] += latent_term(m, z).tolist()
        if scorer.local_model is not None:
            m = scorer.local_model
            xl = F.interpolate(x, size=(scorer.local_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
            p, grid = extract_patches(xl, m.config.patch_size, m.config.patch_stride)
            z, xh = m(p)
            lr = recon_term(m, p, xh).view(x.shape[0], -1)
            lh = latent_term(m, z).view(x.shape[0], -1)
            at = (lr + lh).argmax(1, keepdim=True)
            out["l_lr_max"] += lr.amax(1).tolist()
            out["l_lh_max"] += lh.amax(1).tolist()
            out["l_lr_at"] += lr.gather(1, at)[:, 0].tolist()
            out["l_lh_at"] += lh.gather(1, at)[:, 0].tolist()
        # maps through the Scorer's own path (global and local separately)
        kinds = scorer.module.component_maps(scorer.module.terms(x), x.shape[-2:])
        gm, lm = kinds.get("global"), kinds.get("local")
        for j, it in enumerate(batch.items):
            pair = []
            for mm in (gm, lm):
                if mm is None:
                    pair.append(None)
                    continue
                pair.append(F.interpolate(mm[j : j + 1], size=it.orig_size, mode="bilinear", align_corners=False))
            maps.append(pair)
        out["maps"] += maps
    return out


def _shift(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    return torch.roll(m, shifts=(dy, dx), dims=(-2, -1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("category")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    scorer = Scorer(a.model, device="cpu", batch_size=8)
    samples = resolve_layout(a.data, a.category).test_samples()
    labels = [s.label for s in samples]
    test = parts(scorer, [s.path for s in samples])
    val = parts(scorer, validation_files(a.model))
    val_set = {str(p) for p in validation_files(a.model)}
    train = [p for p in list_train_files(a.data, a.category) if str(p) not in val_set][:20]
    tr = parts(scorer, train)
    rep: dict = {"model": a.model, "category": a.category}
    y = np.array(labels)
    comp = {}
    for k in ("g_lr", "g_lh", "l_lr_max", "l_lh_max", "l_lr_at", "l_lh_at"):
        if not test[k]:
            continue
        v = np.array(test[k])
        comp[k] = {
            "image_AUROC": auroc(v.tolist(), labels),
            "mean_train_normal": float(np.mean(tr[k])),
            "mean_val_normal": float(np.mean(val[k])),
            "mean_test_normal": float(v[y == 0].mean()),
            "mean_test_anomalous": float(v[y == 1].mean()),
            "std_val_normal": float(np.std(val[k], ddof=1)),
        }
    rep["components"] = comp
    if test["g_lr"] and test["l_lr_max"]:
        sg = np.array(test["g_lr"]) + np.array(test["g_lh"])
        sl = np.array(test["l_lr_at"]) + np.array(test["l_lh_at"])
        rep["sum_AUROC"] = auroc((sg + sl).tolist(), labels)
        rep["s_G_AUROC"] = auroc(sg.tolist(), labels)
        rep["s_L_AUROC"] = auroc(sl.tolist(), labels)
        rep["s_G_share_of_sum_val"] = float(np.mean(sg[y == 0]) / np.mean((sg + sl)[y == 0]))
    masks = [load_mask(s.mask, tuple(test["maps"][i][0 if test["maps"][i][0] is not None else 1].shape[-2:]))[0].numpy()
             > 0.5 for i, s in enumerate(samples)]  # fmt: skip
    pix = {}
    g = [m[0][0, 0] for m in test["maps"]] if test["maps"][0][0] is not None else None
    lo = [m[1][0, 0] for m in test["maps"]] if test["maps"][0][1] is not None else None
    both = [a_ + b_ for a_, b_ in zip(g, lo, strict=True)] if g and lo else (g or lo)
    if g:
        pix["global_map"] = pixel_auroc([m.numpy() for m in g], masks)
    if lo:
        pix["local_map"] = pixel_auroc([m.numpy() for m in lo], masks)
    pix["sum_map"] = pixel_auroc([m.numpy() for m in both], masks)
    for s in (2.0, 4.0, 8.0):
        pix[f"sum_map_sigma{s:g}"] = pixel_auroc(
            [gaussian_smooth(m[None, None], s)[0, 0].numpy() for m in both], masks
        )
    shifts = {}
    for dy in (-8, -4, 0, 4, 8):
        for dx in (-8, -4, 0, 4, 8):
            if abs(dy) + abs(dx) > 8:
                continue
            shifts[f"{dy},{dx}"] = pixel_auroc([_shift(m, dy, dx).numpy() for m in both], masks)
    pix["shifted_sum_map"] = shifts
    # reconstruction of normal texture: pixel-map level at normal test images
    pairs = list(zip(both, masks, labels, strict=True))
    pix["mean_map_test_normal"] = float(np.mean([m.mean().item() for m, _, yy in pairs if yy == 0]))
    pix["mean_map_in_defect"] = float(np.mean([m.numpy()[k].mean() for m, k, _ in pairs if k.any()]))
    pix["mean_map_outside_defect_anomalous"] = float(
        np.mean([m.numpy()[~k].mean() for m, k in zip(both, masks, strict=True) if k.any()])
    )
    rep["pixel"] = pix
    text = json.dumps(rep, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
