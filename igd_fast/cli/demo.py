"""``igd-fast demo``: the whole pipeline on a fresh machine in a few CPU minutes.

1. generates a small synthetic MVTec-layout dataset (textured normals; blobs and
   scratches as anomalies, with masks),
2. trains a small global and a small local IGD model on it,
3. scores the test images (``igd-fast score``: scores.csv, overlays) and evaluates
   them (``igd-fast eval --html``: report.json, report.png, report.html),
4. prints where everything is.

The models are deliberately small (128² images, 4-scale global MS-SSIM, narrow
ResNets) so that this runs on 2 CPU cores; the method and the code path are the
full ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import LOCAL
from ._args import (
    EXIT_USAGE,
    UsageError,
    add_out,
    add_runtime,
    check_device_backend,
    check_out_dir,
    examples,
    positive_int,
)

CATEGORY = "synth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = examples("igd-fast demo --out runs/demo", "igd-fast demo --out runs/demo --epochs 5 --seed 1")
    add_out(p, False, "folder for data, model and reports (default ./igd_demo)", default="igd_demo")
    p.add_argument("--epochs", type=positive_int, default=3, help="training epochs of each model (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the training")
    add_runtime(p, batch_default=8)


def small_configs(image_size: int = 128, width: int = 16, latent: int = 32, estep_every: int = 2):
    """(global, local) ModelConfigs small enough for CPU minutes.

    The global model keeps the 11×11 window but uses 4 scales (the global weights'
    first four, renormalised: the same numbers as the local config's) because 5 scales
    need >= 161 px.
    """
    from ..models import ModelConfig

    common = dict(image_size=image_size, width=width, latent=latent, blocks=(1, 1, 1, 1), estep_every=estep_every)
    g = ModelConfig(kind="global", weights=LOCAL.weights, **common)
    loc = ModelConfig(kind="local", patch_size=32, patch_stride=16, **common)
    return g, loc


def train_small(
    data_root: str | Path,
    category: str,
    model_dir: str | Path,
    epochs: int,
    seed: int = 0,
    workers: int = 0,
    device: str | None = None,
    backend: str | None = None,
    progress: bool = True,
    batch_size: int = 8,
    **config_kw,
) -> Path:
    """Train the small global + local pair into ``model_dir`` (global.pt, local.pt, run.json)."""
    from ..train import train

    g, loc = small_configs(**config_kw)
    for cfg in (g, loc):
        train(
            cfg,
            data_root,
            category,
            model_dir,
            epochs=epochs,
            batch_size=batch_size,
            workers=workers,
            seed=seed,
            val_fraction=0.15,
            device=device,
            backend=backend,
            # the local model sees 49 patches per image: a random 16 keep epochs short
            patches_per_image=16 if cfg.kind == "local" else None,
            progress=progress,
            overwrite=True,  # the demo's own folder: a rerun replaces its model
        )
    return Path(model_dir)


def run(args: argparse.Namespace) -> int:
    from ..data import make_synthetic_mvtec
    from . import main as cli_main

    t0 = time.perf_counter()
    try:
        check_device_backend(args)
        out = check_out_dir(args.out)
    except UsageError as e:
        print(f"igd-fast demo: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    data = out / "data"
    model = out / "model"
    print(f"[1/4] generating a synthetic MVTec-layout dataset in {data / CATEGORY}", file=sys.stderr)
    make_synthetic_mvtec(data, CATEGORY, n_train=40, n_test_good=10, n_test_bad=10, size=128, seed=args.seed)
    print(f"[2/4] training a small global + local model ({args.epochs} epochs each) -> {model}", file=sys.stderr)
    train_small(data, CATEGORY, model, args.epochs, args.seed, args.workers, args.device, args.backend,
                not args.no_progress, args.batch_size)  # fmt: skip
    common = ["--model", str(model), "--workers", str(args.workers), "--batch-size", str(args.batch_size)]
    if args.no_progress:
        common.append("--no-progress")
    if args.device:
        common += ["--device", args.device]
    if args.backend:
        common += ["--backend", args.backend]
    print("[3/4] scoring the test images", file=sys.stderr)
    code = cli_main(["score", *common, "--input", str(data / CATEGORY / "test"), "--out", str(out / "scores")])
    if code not in (0, 3):
        return code
    print("[4/4] evaluating", file=sys.stderr)
    code = cli_main(["eval", *common, "--data", str(data), "--category", CATEGORY, "--out", str(out / "eval"),
                     "--html"])  # fmt: skip
    if code not in (0, 3):
        return code
    print(
        f"\ndemo done in {time.perf_counter() - t0:.0f} s\n"
        f"  report:   {out / 'eval' / 'report.json'}\n"
        f"  figure:   {out / 'eval' / 'report.png'}\n"
        f"  page:     {out / 'eval' / 'report.html'} (open it in a browser)\n"
        f"  scores:   {out / 'scores' / 'scores.csv'}\n"
        f"  overlays: {out / 'scores' / 'overlays'}/\n"
        f"  model:    {model}/ (global.pt, local.pt, run.json, threshold.json)"
    )
    return 0
