"""``igd-fast train``: train the global and/or local IGD model on an MVTec-layout folder.

Runs unchanged under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
data layout: ROOT/CATEGORY/train/good/*.png (training normals; a validation part is
carved from them with --val-fraction/--seed and recorded in OUT/run.json),
ROOT/CATEGORY/test/<defect>/*.png, ROOT/CATEGORY/ground_truth/<defect>/<name>_mask.png.

writes OUT/global.pt and/or OUT/local.pt (checkpoint after every epoch, atomically),
OUT/<kind>_log.csv/.json (per-epoch losses, validation loss, images/s), OUT/run.json.

examples:
  igd-fast train --data /data/mvtec --category bottle --out models/bottle
  torchrun --nproc_per_node 4 -m igd_fast train --data /data/mvtec --category bottle \\
      --out models/bottle --batch-size 16 --amp --compile
  igd-fast train ... --resume            # continue from OUT/<kind>.pt exactly
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="ROOT", help="dataset root holding CATEGORY/")
    g.add_argument("--category", required=True, metavar="NAME", help="category folder under ROOT")
    g.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction of train/good held out for validation (default 0.1)"
    )
    g.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable images with a warning instead of stopping"
    )
    g.add_argument("--workers", type=int, default=4, help="DataLoader worker processes (default 4)")
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        choices=("global", "local", "both"),
        default="both",
        help="which model(s) to train (default both, global first)",
    )
    m.add_argument("--image-size", type=int, default=256, help="images are resized to this (default 256)")
    m.add_argument("--patch-size", type=int, default=32, help="local model patch size (default 32)")
    m.add_argument("--patch-stride", type=int, default=16, help="local model patch stride (default 16)")
    m.add_argument("--latent", type=int, default=128, help="latent dimension Z (default 128)")
    m.add_argument(
        "--blocks",
        type=int,
        nargs=4,
        default=(2, 2, 2, 2),
        metavar="N",
        help="BasicBlocks per stage (default 2 2 2 2 = ResNet-18)",
    )
    m.add_argument("--width", type=int, default=64, help="encoder base width (64 = ResNet-18)")
    m.add_argument(
        "--gamma",
        type=float,
        default=0.2,
        help="critic mixing gamma; negative draws gamma ~ U(0,1) per sample (default 0.2)",
    )
    m.add_argument("--estep-every", type=int, default=10, help="E-step every N epochs (default 10)")
    m.add_argument("--lr", type=float, default=1e-4)
    m.add_argument("--weight-decay", type=float, default=1e-6)
    for kind, win, scales in (("global", 11, 5), ("local", 3, 4)):
        m.add_argument(
            f"--{kind}-win-size", type=int, default=None, help=f"{kind} model MS-SSIM window (default {win})"
        )
        m.add_argument(
            f"--{kind}-weights",
            type=float,
            nargs="+",
            default=None,
            metavar="W",
            help=f"{kind} model MS-SSIM scale weights, one per scale (default: the {scales} SPEC weights)",
        )
    m.add_argument(
        "--init-encoder", metavar="FILE", help="torchvision ResNet-18 state_dict file to initialise the encoder trunk"
    )
    m.add_argument(
        "--distill-teacher",
        metavar="FILE",
        help="torchvision ResNet-18 state_dict file: knowledge-distillation pre-training",
    )
    m.add_argument("--distill-steps", type=int, default=1000, help="KD pre-training steps (default 1000)")
    t = p.add_argument_group("training")
    t.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    t.add_argument("--epochs", type=int, default=256, help="epochs (default 256, as the paper)")
    t.add_argument("--batch-size", type=int, default=16, help="images per batch and process (default 16)")
    t.add_argument(
        "--patches-per-image",
        type=int,
        default=None,
        help="local model: random patches per image and step (default: all)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from OUT/<kind>.pt if present")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on for CUDA)"
    )
    t.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on for CUDA)",
    )
    t.add_argument("--compile", action="store_true", help="torch.compile the networks")
    t.add_argument("--backend", default=None, help="MS-SSIM backend: torch, cpu, cuda, triton")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from ..data import CorruptImageError, DataLayoutError
    from ..models import ModelConfig
    from ..train import NonFiniteLossError, TrainOptions, train

    opts = TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        seed=args.seed,
        val_fraction=args.val_fraction,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        channels_last=args.channels_last,
        backend=args.backend,
        skip_corrupt=args.skip_corrupt,
        init_encoder=args.init_encoder,
        distill_teacher=args.distill_teacher,
        distill_steps=args.distill_steps,
        patches_per_image=args.patches_per_image,
        resume=args.resume,
        progress=not args.no_progress,
    )
    kinds = ("global", "local") if args.model == "both" else (args.model,)
    try:
        for kind in kinds:
            cfg = ModelConfig(
                kind=kind,
                image_size=args.image_size,
                patch_size=args.patch_size,
                patch_stride=args.patch_stride,
                latent=args.latent,
                width=args.width,
                blocks=tuple(args.blocks),
                gamma=None if args.gamma < 0 else args.gamma,
                estep_every=args.estep_every,
                lr=args.lr,
                weight_decay=args.weight_decay,
                win_size=getattr(args, f"{kind}_win_size"),
                weights=getattr(args, f"{kind}_weights"),
            )
            res = train(cfg, args.data, args.category, args.out, opts)
            if not dist.is_initialized() or dist.get_rank() == 0:
                last = res.history[-1] if res.history else {}
                summary = ", ".join(f"{k}={last[k]:.4f}" for k in ("loss", "val_loss") if k in last)
                print(f"{kind}: wrote {res.checkpoint} ({summary})")
    except (DataLayoutError, CorruptImageError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        print(f"igd-fast train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
