"""Ablation: the Gaussian AD head (:mod:`igd_fast.models.gaussian`) on a trained defect
model's encoders, beside the defect map the cpu preset scores with. The head is fitted on 60
training normals (800 positions each); each level's map is standardised by the validation
normals' pixels (run.json), so no test image sets anything. Image score and map smoothing as
:class:`igd_fast.score.components.DefectPart`.

    python benchmarks/quality/gaussian_head.py MODEL_DIR DATA_DIR [--out rows.json]

(DATA_DIR: the category folder, e.g. ../shared/data/textures_dev/moon_grey; the model's own
train/validation files are read from the category it was trained on.)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from igd_fast.checkpoint import load_defect_model
from igd_fast.data.mvtec import load_image, open_rgb, working_size
from igd_fast.metrics import auroc
from igd_fast.models.gaussian import GaussianHead, feature_bank
from igd_fast.score.components import (
    DEFECT_MAP_SIGMA,
    DEFECT_SCORE_SIGMA,
    DEFECT_SIGMA_SIZE,
    DEFECT_TOP_FRACTION,
    DefectPart,
)
from igd_fast.score.maps import gaussian_smooth


def read(path: Path, size: int) -> torch.Tensor:
    im = open_rgb(path)
    return load_image(path, working_size(im.size[1], im.size[0], size))[None]


def encoder_levels(model, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The reconstruction encoder's pooling levels (r1..) and the segmentation U-Net's first
    three down levels (s1..s3, on the image beside its repair)."""
    k = model.config.multiple
    h, w = x.shape[-2:]
    xp = F.pad(x, (0, (-w) % k, 0, (-h) % k), mode="replicate")
    out, y = [], model.recon.encoder[0](xp)
    for i in range(model.config.recon_depth):
        y = model.recon.encoder[1 + 3 * i : 4 + 3 * i](y)
        out.append((f"r{i + 1}", y))
    s = model.seg.stem(torch.cat([xp, model.recon.decoder(y)], 1))
    for j, d in enumerate(model.seg.down[:3]):
        s = d(s)
        out.append((f"s{j + 1}", s))
    return out


def level_maps(model, head: GaussianHead, x: torch.Tensor) -> dict[str, torch.Tensor]:
    levels = encoder_levels(model, x)
    h, w = x.shape[-2:]
    k = model.config.multiple
    size = (h + (-h) % k, w + (-w) % k)
    maps = head([f for _, f in levels])
    return {n: F.interpolate(m, size=size, mode="bilinear", align_corners=False)[..., :h, :w]
            for (n, _), m in zip(levels, maps)}  # fmt: skip


def image_score(m: torch.Tensor) -> float:
    scale = max(m.shape[-2:]) / DEFECT_SIGMA_SIZE
    fine = gaussian_smooth(m, DEFECT_SCORE_SIGMA * scale).flatten()
    return float(fine.topk(max(1, math.ceil(DEFECT_TOP_FRACTION * fine.numel()))).values.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    run = json.loads((a.model_dir / "run.json").read_text())
    home = Path(run["data_root"]) / run["category"]
    model, norm = load_defect_model(a.model_dir / "defect.pt")
    part, size = DefectPart(model, norm), model.config.image_size
    g = torch.Generator().manual_seed(0)
    train = [home / f for f in run["train_files"]]
    pick = torch.randperm(len(train), generator=g)[:60].tolist()
    with torch.inference_mode():
        per_level: dict[str, list] = {}
        for i in pick:
            for n, f in encoder_levels(model, read(train[i], size)):
                per_level.setdefault(n, []).append(feature_bank(f, 800, g))
        names = list(per_level)
        head = GaussianHead.fit([torch.cat(per_level[n]) for n in names])
        val = [level_maps(model, head, read(home / f, size)) for f in run["val_files"]]
        z = {n: (float(torch.cat([v[n].flatten() for v in val]).mean()),
                 float(torch.cat([v[n].flatten() for v in val]).std())) for n in names}  # fmt: skip
        rows = []
        for p in sorted((a.data_dir / "test").glob("*/*")):
            x = read(p, size)
            lv = {n: (m - z[n][0]) / z[n][1] for n, m in level_maps(model, head, x).items()}
            mp = a.data_dir / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
            h, w = x.shape[-2:]
            mask = (np.asarray(Image.open(mp).convert("L").resize((w, h), Image.NEAREST)) > 0) if mp.exists() \
                else np.zeros((h, w), bool)  # fmt: skip
            rows.append((p.parent.name != "good", part.standardised(x)[:, :1], lv, mask))
    maps = {"defect map (the cpu preset)": lambda d, lv: d}
    maps.update({f"gauss {n}": (lambda d, lv, n=n: lv[n]) for n in names})
    maps["gauss r-levels summed"] = lambda d, lv: sum(lv[n] for n in names if n[0] == "r")
    maps["gauss s-levels summed"] = lambda d, lv: sum(lv[n] for n in names if n[0] == "s")
    maps["defect map + gauss mean of levels"] = lambda d, lv: d + sum(lv.values()) / len(lv)
    out = []
    for label, fn in maps.items():
        ys, ss, ps, pm = [], [], [], []
        for y, d, lv, mask in rows:
            m = fn(d, lv)
            ys.append(y)
            ss.append(image_score(m))
            sm = gaussian_smooth(m, DEFECT_MAP_SIGMA * max(m.shape[-2:]) / DEFECT_SIGMA_SIZE)
            ps.append(sm.flatten().numpy()[::4])
            pm.append(mask.flatten()[::4])
        row = {"map": label, "image_AUROC": auroc(np.array(ss), np.array(ys)),
               "pixel_AUROC": auroc(np.concatenate(ps), np.concatenate(pm))}  # fmt: skip
        print(f"{label:36s} image {row['image_AUROC']:.3f} pixel {row['pixel_AUROC']:.3f}", flush=True)
        out.append(row)
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
