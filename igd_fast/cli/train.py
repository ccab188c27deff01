"""``igd-fast train``: train the global and/or local IGD model on an MVTec-layout folder.

Runs unchanged under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys

from .. import _dist
from ..models.config import LR_SCHEDULES
from ..models.variants import VARIANTS
from ._args import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_out,
    add_runtime,
    add_training_data,
    check_device_backend,
    check_out_dir,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_int,
    training_layout,
    unit_float,
)
from .presets import Default, add_preset, apply_preset

# what each --model choice trains, in order
MODEL_CHOICES = {"global": ("global",), "local": ("local",), "both": ("global", "local"), "defect": ("defect",),
                 "global+defect": ("global", "defect"), "local+defect": ("local", "defect")}  # fmt: skip

EPILOG = """\
data layout: ROOT/CATEGORY/train/good/*.png (training normals; a validation part is
carved from them with --val-fraction/--seed and recorded in OUT/run.json),
ROOT/CATEGORY/test/<defect>/*.png, ROOT/CATEGORY/ground_truth/<defect>/<name>_mask.png.
MVTec LOCO (recognised by CATEGORY/validation/good): that folder is the validation part.
Folder layout: --normal-dir DIR [--normal-test-dir DIR] instead of --data/--category.

writes OUT/global.pt and/or OUT/local.pt (checkpoint after every epoch, atomically),
OUT/<kind>_log.csv/.json (per-epoch losses, validation loss, images/s), OUT/run.json, and
OUT/recipe.json: the scoring recipe score / eval / export use by default (the preset's).

memory: each batch runs through the networks --micro-batch inputs at a time with
gradient accumulation (one optimiser step per batch); the default keeps one step's
activations near 3 GB (11 images of 256² or 715 patches of 32² at width 64).

an OUT that already holds a trained model of a kind to train is refused (exit 2)
unless --resume (continue it) or --overwrite (replace it) is given; one run at a time
per OUT (a second is refused while the first holds OUT/.igd-fast.lock).

exit codes: 0 trained (or nothing left to train); 2 bad arguments or data, a
non-finite loss or diverged model, a full disk (the last checkpoint stays intact), or
interrupted (Ctrl-C / SIGTERM: the last checkpoint stays intact
and the message gives the --resume command).

presets (2 CPU cores): --preset auto, the default, picks one of the two below by the training
images (an object in place or a surface) and says which; --preset cpu, for objects: IGD's global
model at 128² and the defect model, scored together (--model global leaves the defect model out);
--preset cpu-texture, for textures: IGD's local model at 256² and the defect model (--model local
leaves it out); --preset paper: every default the paper's (GPU-sized models and scoring). Values
in the --preset help; each flag given explicitly overrides its preset value; run.json records the
preset and the values it set, recipe.json the scoring recipe. The defaults the flags' help gives
are the flags' own (--preset paper's); the other presets replace some of them.

encoder initialisation: --init-encoder FILE takes the file of `igd-fast pretrain` (the
whole encoder, trunk + projection to Z, per model kind; width/blocks/latent must match,
exit 2 naming the mismatch) or a torchvision ResNet-18 state_dict (the trunk only,
width 64, blocks 2 2 2 2); run.json records what was loaded.

examples:
  igd-fast train --data /data/mvtec --category bottle --out models/bottle
  igd-fast train --data /data/mvtec --category bottle --out models/bottle --preset cpu
  igd-fast train --data /data/mvtec --category bottle --out models/bottle --preset paper --device cuda --amp
  igd-fast pretrain --data /data/mvtec --category bottle --out enc.pt --preset cpu
  igd-fast train --data /data/mvtec --category bottle --out models/bottle --preset cpu --init-encoder enc.pt
  igd-fast train --data /data/mvtec --category bottle --out models/bottle --preset paper --model global --epochs 50
  torchrun --nproc_per_node 4 -m igd_fast train --data /data/mvtec --category bottle \\
      --out models/bottle --preset paper --batch-size 16 --amp --compile
  igd-fast train ... --resume            # continue from OUT/<kind>.pt exactly
"""


def _add_defect_flags(m: argparse._ArgumentGroup) -> None:
    m.add_argument("--defect-size", type=positive_int, default=224,
                   help="the defect model's working size: the longer image side, aspect kept (default 224)")
    m.add_argument("--defect-steps", type=positive_int, default=1000,
                   help="the defect model's optimiser steps of 8 images (default 1000: 17-19 min at 224 on 2 cores)")
    m.add_argument("--defect-crop", type=non_negative_int, default=0,
                   help="train the defect model on random square crops of this side taken from the working-size "
                        "images (0, the default: whole images). With a --defect-size above 224 a crop of 224 keeps "
                        "a step's cost; scoring then reads whole images at --defect-size, tiled when large")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("training")
    add_out(t, True, "model directory to write")
    add_preset(t, "train")
    t.add_argument("--epochs", type=non_negative_int, default=Default(256), help="epochs (default 256, as the paper)")
    t.add_argument("--patches-per-image", type=positive_int, default=Default(None),
                   help="local model: random patches per image and step (default: all)")
    t.add_argument("--micro-batch", "--patch-batch", dest="micro_batch", type=positive_int, default=None,
                   help="inputs (images or patches) per forward/backward, gradients accumulated over the batch "
                        "(default: from a ~3 GB activation budget)")
    t.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and every draw")
    t.add_argument("--resume", action="store_true", help="continue from OUT/<kind>.pt if present")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the model(s) already in OUT (without it, or --resume, a trained model there is "
                        "refused: nothing is replaced by accident)")  # fmt: skip
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=Default(None),
                   help="bf16 autocast (default: on for CUDA; on a CPU with bf16 instructions for the defect model "
                        "and for --preset cpu-texture's local model)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=Default(None),
                   help="channels_last memory format (default: on for CUDA and for --preset cpu-texture)")
    t.add_argument("--compile", action="store_true", help="torch.compile the networks")
    add_runtime(t)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    add_training_data(p, "for validation")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=tuple(MODEL_CHOICES), default=Default("both"),
                   help="which model(s) to train (default both, global first): global / local are IGD's; defect: "
                        "a reconstruction + segmentation network trained on synthetic defects, at each image's "
                        "aspect (--defect-size, --defect-steps); global+defect / local+defect: IGD's global / "
                        "local model and the defect model, scored together (--preset cpu / cpu-texture)")  # fmt: skip
    _add_defect_flags(m)
    m.add_argument("--variant", choices=tuple(VARIANTS), default="igd",
                   help="method: igd (default) or one of the paper's baselines/ablations: mse, rec (l_r), "
                        "rec-gac (l_r + l_h), dsvdd (Deep SVDD), dsvdd-rec; recorded in the checkpoint")
    m.add_argument("--image-size", type=positive_int, default=Default(256),
                   help="images are resized to this (default 256)")
    m.add_argument("--patch-size", type=positive_int, default=32, help="local model patch size (default 32)")
    m.add_argument("--patch-stride", type=positive_int, default=16, help="local model patch stride (default 16)")
    m.add_argument("--latent", type=positive_int, default=128, help="latent dimension Z (default 128)")
    m.add_argument("--blocks", type=positive_int, nargs=4, default=Default((2, 2, 2, 2)), metavar="N",
                   help="BasicBlocks per stage (default 2 2 2 2 = ResNet-18)")
    m.add_argument("--width", type=positive_int, default=Default(64), help="encoder base width (64 = ResNet-18)")
    m.add_argument("--gamma", type=finite_float, default=0.2,
                   help="critic mixing gamma in [0, 1]; negative draws gamma ~ U(0,1) per sample (default 0.2)")
    m.add_argument("--estep-every", type=positive_int, default=10, help="E-step every N epochs (default 10)")
    m.add_argument("--sigma2-floor", type=non_negative_float, default=0.0,
                   help="E-step sigma^2 = max(mean ||z - mu||^2, this); 0 = SPEC (default), the published code used 1")
    m.add_argument("--rho", type=unit_float, default=Default(0.15),
                   help="weight of the absolute-error part of l_r = rho |x - x_hat| / L + (1 - rho)(1 - MS-SSIM) "
                        "(default 0.15, SPEC)")
    m.add_argument("--lr", type=non_negative_float, default=Default(1e-4), help="Adam learning rate (default 1e-4)")
    m.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=Default("constant"),
                   help="constant (default, the paper) or cosine: lr (1 + cos(pi e / E)) / 2 at epoch e of "
                        "--epochs E (resume with the same --epochs to continue the same schedule)")
    m.add_argument("--weight-decay", type=non_negative_float, default=1e-6, help="Adam weight decay (default 1e-6)")
    for kind, win, scales in (("global", 11, 5), ("local", 3, 4)):
        m.add_argument(f"--{kind}-win-size", type=positive_int, default=None,
                       help=f"{kind} model MS-SSIM window (odd; default {win})")
        m.add_argument(f"--{kind}-weights", type=non_negative_float, nargs="+", default=Default(None), metavar="W",
                       help=f"{kind} model MS-SSIM scale weights, one per scale (default: the {scales} SPEC weights)")
    m.add_argument("--init-encoder", metavar="FILE",
                   help="initialise the encoder from an `igd-fast pretrain` file (whole encoder, per model kind) "
                        "or a torchvision ResNet-18 state_dict file (trunk); the format is detected")
    m.add_argument("--distill-teacher", metavar="FILE",
                   help="torchvision ResNet-18 state_dict file: knowledge-distillation pre-training")
    m.add_argument("--distill-steps", type=non_negative_int, default=1000, help="KD pre-training steps (default 1000)")
    _add_training_flags(p)


def _resume_command(argv: list[str]) -> str:
    args = [a for a in argv if a != "--resume"]
    return " ".join(shlex.quote(a) for a in ["igd-fast", *args, "--resume"])


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ..outputs import FolderInUse, OutputError, output_lock

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        check_out_dir(args.out)
        # one run per model folder (rank 0 holds it for the torchrun group)
        with output_lock(Path(args.out)) if rank0 else contextlib.nullcontext():
            return _run(args)
    except (UsageError, FolderInUse) as e:
        print(f"igd-fast train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as e:
        print(f"igd-fast train: error: {e}; the last checkpoint written is intact (every write is atomic): free "
              f"space and continue with: {_resume_command(args._argv)}", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import CheckpointError
    from ..data import CorruptImageError, DataLayoutError
    from ..models import ModelConfig
    from ..train import NonFiniteLossError, TrainingInterrupted, TrainOptions, sigterm_as_interrupt, train
    from ..train.defect_run import train_defect
    from ..train.setup import existing_model

    try:
        choice = _resolve_auto(args)
    except UsageError as e:
        print(f"igd-fast train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    applied = apply_preset(args, "train")
    try:
        _check_device(args, applied)
        opts = TrainOptions(
            epochs=args.epochs, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
            val_fraction=args.val_fraction, device=args.device, amp=args.amp, compile=args.compile,
            channels_last=args.channels_last, backend=args.backend, skip_corrupt=args.skip_corrupt,
            init_encoder=args.init_encoder, distill_teacher=args.distill_teacher, distill_steps=args.distill_steps,
            patches_per_image=args.patches_per_image, micro_batch=args.micro_batch, resume=args.resume,
            overwrite=args.overwrite, progress=not args.no_progress, preset=args.preset,
            preset_applied=applied or None, preset_choice=choice,
        )  # fmt: skip
        opts.check()
        data = training_layout(args)
        kinds = MODEL_CHOICES[args.model]
        for kind in kinds:  # before the first model trains for hours
            why = existing_model(Path(args.out), kind, opts)
            if why is not None:
                raise UsageError(why)
        # every config is checked before the first model trains for hours
        cfgs = [_defect_config(args) if kind == "defect" else _config(args, kind, ModelConfig) for kind in kinds]
        if args.init_encoder and not args.resume:
            _check_init_encoder(args.init_encoder, [c for c in cfgs if c.kind != "defect"])
        if args.distill_teacher and not args.resume:
            _check_teacher(args.distill_teacher)
        _write_recipe(args.out, args.preset, kinds)
    except (UsageError, ValueError, FileNotFoundError, OSError) as e:
        print(f"igd-fast train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with sigterm_as_interrupt():
            for cfg in cfgs:
                _report(cfg, train_defect(cfg, data, args.out, opts) if cfg.kind == "defect" else train(
                    cfg, data, None, args.out, opts))  # fmt: skip
    except TrainingInterrupted as e:
        state = "none written yet" if e.epoch is None else f"{e.checkpoint} is intact at epoch {e.epoch}"
        print(f"igd-fast train: interrupted; {state}; continue with: {_resume_command(args._argv)}", file=sys.stderr)
        return EXIT_USAGE
    except (DataLayoutError, CorruptImageError, NonFiniteLossError, CheckpointError, FileNotFoundError,
            ValueError) as e:  # fmt: skip
        print(f"igd-fast train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        _dist.close()
    return EXIT_OK


def _check_device(args: argparse.Namespace, applied: dict) -> None:
    """``--device`` / ``--backend`` checked, and a preset's bf16 (``amp``) kept only where the device
    computes bf16 natively; elsewhere autocast would convert in software, so the flag's own default
    (fp32 on the CPU) stands, as the defect model decides for itself."""
    check_device_backend(args)
    if not applied.get("amp"):
        return
    from ..score.precision import bf16_where_native

    native, why = bf16_where_native(None, _dist.resolve_device(args.device))
    if not native:
        args.amp = None
        del applied["amp"]
        if _dist.init().is_main:
            print(f"--preset {args.preset}: the local model trains in fp32 ({why})")


def _resolve_auto(args: argparse.Namespace) -> dict | None:
    """``--preset auto``: the preset the training images' layout strength picks, set on ``args``
    and printed; its record for run.json (None without ``--preset auto``)."""
    from ..data.alignment import layout_strength
    from .presets import AUTO, AUTO_LAYOUT_CUT, auto_preset

    if args.preset != AUTO:
        return None
    try:
        measured = layout_strength(training_layout(args).train_files())
    except ValueError as e:
        raise UsageError(f"--preset auto: {e}") from None
    args.preset = auto_preset(measured.strength)
    what = "an object in place" if args.preset == "cpu" else "a surface (texture)"
    if _dist.init().is_main:
        print(f"--preset auto: layout strength {measured.strength:.3g} over {measured.n_images} training images "
              f"({'>=' if args.preset == 'cpu' else '<'} {AUTO_LAYOUT_CUT}: {what}): --preset {args.preset}")
    return {"preset": AUTO, "chose": args.preset, "layout_strength": measured.strength,
            "n_images": measured.n_images, "cut": AUTO_LAYOUT_CUT}  # fmt: skip


def _report(cfg, res) -> None:
    """One line per trained model (rank 0)."""
    if not _dist.init().is_main:
        return
    if res.note:
        print(f"{cfg.kind}: {res.note}")
        return
    last = res.history[-1] if res.history else {}
    summary = ", ".join(f"{k}={last[k]:.4f}" for k in ("loss", "val_loss") if k in last)
    print(f"{cfg.kind}: wrote {res.checkpoint} ({summary})")


def _write_recipe(out: str, preset: str | None, kinds: tuple[str, ...]) -> None:
    """The scoring recipe the preset names (the defaults without one) into OUT/recipe.json,
    before training: an interrupted model directory scores with it too."""
    import os

    from ..score.recipe import Recipe, write_model_recipe
    from .presets import train_recipe

    if os.environ.get("RANK", "0") == "0":  # one writer under torchrun (the write is atomic anyway)
        write_model_recipe(out, Recipe.resolve(preset=train_recipe(preset, kinds)), preset)


def _check_init_encoder(path: str, cfgs: list) -> None:
    """Load ``path`` into a throwaway encoder of every model to be trained, so that a
    file that does not fit the second model stops before the first one trains."""
    from ..models import Encoder, init_encoder

    for cfg in cfgs:
        init_encoder(Encoder(cfg.latent, cfg.width, cfg.blocks, bias_free=cfg.method.bias_free), path, cfg)


def _check_teacher(path: str) -> None:
    """Read the --distill-teacher file once before anything trains."""
    from ..models.pretrain import teacher_from_file

    try:
        teacher_from_file(path)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--distill-teacher: {e}") from None


def _defect_config(args: argparse.Namespace):
    from ..models.defect import DefectConfig

    return DefectConfig(image_size=args.defect_size, steps=args.defect_steps, crop=args.defect_crop)


def _config(args: argparse.Namespace, kind: str, model_config):
    return model_config(
        kind=kind, variant=args.variant, image_size=args.image_size, patch_size=args.patch_size,
        patch_stride=args.patch_stride,
        latent=args.latent, width=args.width, blocks=tuple(args.blocks),
        gamma=None if args.gamma < 0 else args.gamma, estep_every=args.estep_every, lr=args.lr,
        lr_schedule=args.lr_schedule,
        rho=args.rho, sigma2_floor=args.sigma2_floor, weight_decay=args.weight_decay,
        win_size=getattr(args, f"{kind}_win_size"),
        weights=getattr(args, f"{kind}_weights"),
    )  # fmt: skip
