"""``igd-fast pretrain``: SimCLR-style self-supervised pre-training of the encoder on a
category's training normals, for ``igd-fast train --init-encoder``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..models.variants import VARIANTS
from ._args import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_runtime,
    add_training_data,
    check_device_backend,
    check_out_dir,
    finite_float,
    non_negative_int,
    positive_int,
    training_layout,
)
from .presets import Default, add_preset, apply_preset

EPILOG = """\
what it does: NT-Xent (SimCLR) from scratch on ROOT/CATEGORY/train/good, less the
validation normals that `train` holds out with the same --val-fraction/--seed (they stay
unseen). Two views of each input: random resized crop (>= 20 % of the area), horizontal
and vertical flips, colour jitter (p 0.8) and grayscale (p 0.2). Inputs: whole images at
--image-size (global model) or --patches-per-image random --patch-size crops of each
image (local model). SGD with momentum 0.9 on the encoder and a 2-layer projection head
(dropped afterwards). One process (no torchrun).

writes OUT (atomically, after every epoch): per model kind the encoder's weights (trunk +
projection to Z), its architecture, the loss per epoch; the settings; the training and
validation file lists. `train --init-encoder OUT` needs the same --width/--blocks/--latent.

exit codes: 0 done; 2 bad arguments or data, a non-finite loss, or interrupted (Ctrl-C /
SIGTERM: OUT keeps every finished epoch and loads as it is).

examples:
  igd-fast pretrain --data /data/mvtec --category bottle --out enc.pt
  igd-fast pretrain --data /data/mvtec --category bottle --out enc.pt --preset cpu
  igd-fast pretrain --data /data/mvtec --category bottle --out enc_g.pt --model global --epochs 200 --device cuda
  igd-fast train --data /data/mvtec --category bottle --out models/bottle --preset cpu --init-encoder enc.pt
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    add_training_data(p, "and never seen, the same split as train's")
    m = p.add_argument_group("encoder (the same names and defaults as train)")
    m.add_argument(
        "--model",
        choices=("global", "local", "both"),
        default=Default("both"),
        help="which model's encoder(s): global (whole images) or local (patches); default both, into one file",
    )
    m.add_argument(
        "--variant",
        choices=tuple(VARIANTS),
        default="igd",
        help="the train variant the encoder is for (dsvdd* need a bias-free encoder; default igd)",
    )
    m.add_argument(
        "--image-size", type=positive_int, default=Default(256), help="images are resized to this (default 256)"
    )
    m.add_argument("--patch-size", type=positive_int, default=32, help="local model patch size (default 32)")
    m.add_argument("--latent", type=positive_int, default=128, help="latent dimension Z (default 128)")
    m.add_argument(
        "--blocks",
        type=positive_int,
        nargs=4,
        default=Default((2, 2, 2, 2)),
        metavar="N",
        help="BasicBlocks per stage (default 2 2 2 2 = ResNet-18)",
    )
    m.add_argument("--width", type=positive_int, default=Default(64), help="encoder base width (64 = ResNet-18)")
    t = p.add_argument_group("pre-training")
    t.add_argument("--out", "--output", dest="out", required=True, metavar="FILE", help="encoder file to write")
    add_preset(t, "pretrain")
    t.add_argument("--epochs", type=non_negative_int, default=Default(100), help="epochs (default 100)")
    t.add_argument("--lr", type=finite_float, default=0.01, help="SGD learning rate (default 0.01)")
    t.add_argument("--temperature", type=finite_float, default=0.5, help="NT-Xent temperature (default 0.5)")
    t.add_argument(
        "--patches-per-image",
        type=positive_int,
        default=Default(8),
        help="local model: random crops per image and step (default 8)",
    )
    t.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and every draw")
    add_runtime(t, batch_default=32)


def _configs(args: argparse.Namespace) -> list:
    from ..models import ModelConfig

    kinds = ("global", "local") if args.model == "both" else (args.model,)
    # one MS-SSIM scale: the loss is not used here, and the input must only fit the encoder
    return [ModelConfig(kind=k, variant=args.variant, image_size=args.image_size, patch_size=args.patch_size,
                        latent=args.latent, width=args.width, blocks=tuple(args.blocks), weights=(1.0,))
            for k in kinds]  # fmt: skip


def _check_out(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--out {p} is a folder; give the encoder file to write, e.g. {p / 'enc.pt'}")
    check_out_dir(p.parent if str(p.parent) else ".", "--out's folder")
    return p


def run(args: argparse.Namespace) -> int:
    from ..data import CorruptImageError, DataLayoutError
    from ..train import NonFiniteLossError, TrainingInterrupted, sigterm_as_interrupt
    from ..train.pretrain import PretrainOptions, pretrain

    applied = apply_preset(args, "pretrain")
    try:
        check_device_backend(args)
        out = _check_out(args.out)
        if not (args.lr > 0 and args.temperature > 0):
            raise UsageError(f"--lr and --temperature must be > 0, got {args.lr}, {args.temperature}")
        opts = PretrainOptions(
            epochs=args.epochs, lr=args.lr, temperature=args.temperature, batch_size=args.batch_size,
            patches_per_image=args.patches_per_image, workers=args.workers, seed=args.seed,
            val_fraction=args.val_fraction, device=args.device, skip_corrupt=args.skip_corrupt,
            progress=not args.no_progress, preset=args.preset, preset_applied=applied or None,
        )  # fmt: skip
        data = training_layout(args)
        cfgs = _configs(args)
    except (UsageError, ValueError) as e:
        print(f"igd-fast pretrain: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with sigterm_as_interrupt():
            res = pretrain(cfgs, data, None, out, opts)
    except TrainingInterrupted as e:
        state = "nothing written yet" if e.epoch is None else f"{out} is intact and loadable"
        print(f"igd-fast pretrain: interrupted; {state} (every finished epoch kept)", file=sys.stderr)
        return EXIT_USAGE
    except (DataLayoutError, CorruptImageError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        print(f"igd-fast pretrain: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    for kind, hist in res.history.items():
        last = f"nt_xent {hist[-1]['loss']:.4f} after {len(hist)} epochs" if hist else "0 epochs"
        print(f"{kind}: {last}")
    print(f"wrote {res.path}")
    return EXIT_OK
