"""Flags the verbs share (one name per meaning), argument types that reject bad
values at parse time (argparse exits 2 with the flag named), and the checks that must
pass before any work starts: device, backend, output folder."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from .._dist import DeviceError, default_score_workers, default_workers, resolve_device

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments or data, nothing to do, or interrupted: nothing half-written
EXIT_SKIPPED = 3  # finished, but some input files could not be read (listed)


class UsageError(ValueError):
    """A user mistake found before work starts; the CLI prints it and exits 2."""


def _int(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = _int(1)
non_negative_int = _int(0)


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def non_negative_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def smoothing_sigma(text: str) -> float:
    """A Gaussian sigma in pixels: >= 0 and within the memory limit of :mod:`igd_fast.limits`."""
    from ..limits import LimitError, check_sigma

    v = non_negative_float(text)
    try:
        return check_sigma(v, "sigma")
    except LimitError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("sigma ")) from None


def fraction(text: str) -> float:
    v = finite_float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {v}")
    return v


def unit_float(text: str) -> float:
    v = finite_float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def open_fraction(text: str) -> float:
    v = finite_float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {v}")
    return v


def add_out(p: argparse.ArgumentParser, required: bool, what: str, default: str | None = None) -> None:
    """``--out DIR`` in every verb; ``--output`` is kept as an alias."""
    p.add_argument("--out", "--output", dest="out", required=required, default=default, metavar="DIR", help=what)


def add_runtime(p: argparse.ArgumentParser, batch_default: int = 16, scoring: bool = False) -> None:
    """--batch-size, --workers, --device, --backend, --no-progress: the same in every verb
    (``scoring``: the scoring verbs' worker default, none on 2 cores)."""
    p.add_argument("--batch-size", type=positive_int, default=batch_default,
                   help=f"images per batch (default {batch_default})")
    workers = default_score_workers() if scoring else default_workers()
    rule = "0 on 2 cores or fewer, else " if scoring else ""
    p.add_argument("--workers", type=non_negative_int, default=workers,
                   help=f"DataLoader worker processes reading images (default {workers} on this machine: "
                        f"{rule}one per two cores, at most 4; 0 reads in the main process)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--backend", default=None, choices=("auto", "torch", "cpu", "cuda", "triton"),
                   help="MS-SSIM kernel backend (default auto: by device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")  # fmt: skip


def add_scoring(p: argparse.ArgumentParser) -> None:
    """--score-norm, --latent-weight, --local-topk, --map-norm, --map-term, --map-sigma, --map-position,
    --image-score: the Scorer's scoring options, the same in ``score`` and ``eval`` (defaults:
    igd_fast.score.threshold.DEFAULT_SCORING)."""
    from ..score.threshold import DEFAULT_SCORING as d
    from ..score.threshold import IMAGE_SCORES, MAP_TERMS, RECON_COLOURS, SCORE_NORMS

    g = p.add_argument_group("scoring (need no retraining; the threshold is recalibrated for each setting)")
    g.add_argument("--score-norm", choices=SCORE_NORMS, default=d["score_norm"],
                   help="sum: s = s_G + s_L (the paper); standard: each term standardised by its validation-normal "
                        f"mean/std before summing (default {d['score_norm']})")
    g.add_argument("--latent-weight", type=non_negative_float, default=d["latent_weight"],
                   help=f"weight of l_h in each model's term, 0 drops it (default {d['latent_weight']:g})")
    g.add_argument("--local-topk", type=positive_int, default=d["local_topk"],
                   help=f"s_L = mean of the K largest patch terms, 1 = max (default {d['local_topk']})")
    g.add_argument("--map-norm", choices=SCORE_NORMS, default=d["map_norm"],
                   help="sum: map = global map + local map (the paper); standard: each standardised by its "
                        f"validation-normal pixel mean/std before summing (default {d['map_norm']})")
    g.add_argument("--map-term", choices=MAP_TERMS, default=d["map_term"],
                   help="lr: each map is the l_r map (the paper); abs: its absolute-error part |x - x_hat| / L "
                        "alone; maha: the squared Mahalanobis distance of the residual x - x_hat over the colour "
                        "channels, under its mean/covariance on the validation normals "
                        f"(default {d['map_term']})")
    g.add_argument("--recon-colour", choices=RECON_COLOURS, default=d["recon_colour"],
                   help="with --map-term abs/maha: grey: the residual is taken against the reconstruction's nearest "
                        "grey image, so only the input's colour counts; damped: the reconstruction's colour is kept "
                        "at sqrt(ridge) = 0.1, so maha weighs it like the grey residual; auto: damped when every "
                        "validation normal is grey (R = G = B: the AE of grey data never learns colour); rgb: the "
                        f"reconstruction as is (default {d['recon_colour']})")
    g.add_argument("--residual-sigma", type=smoothing_sigma, default=d["residual_sigma"],
                   help="with --map-term maha: Gaussian smoothing of the residual before its distance, sigma in "
                        "pixels of the model's input, 0 = none; the AE's pixel noise averages out, a defect's "
                        f"colour does not (default {d['residual_sigma']:g})")
    g.add_argument("--map-sigma", type=smoothing_sigma, default=d["map_sigma"],
                   help="Gaussian smoothing of each map, sigma in pixels of the original image, 0 = none "
                        f"(default {d['map_sigma']:g})")  # fmt: skip
    g.add_argument("--map-position", action=argparse.BooleanOptionalAction, default=d["map_position"],
                   help="standardise each position of the (smoothed) map by the validation normals' mean/std "
                        "there, which removes what every normal image shows (borders, hard parts) "
                        f"(default {'on' if d['map_position'] else 'off'})")
    g.add_argument("--image-score", choices=IMAGE_SCORES, default=d["image_score"],
                   help="terms: s = s_G + s_L of the options above (the paper); map-max: the maximum of the "
                        "final map; map-excess: the mean over its pixels of max(map - t, 0), t = the validation "
                        f"normals' --excess-quantile of map pixels (default {d['image_score']})")
    g.add_argument("--excess-quantile", type=open_fraction, default=d["excess_quantile"],
                   help="with --image-score map-excess: the quantile of the validation normals' map pixels above "
                        f"which a pixel counts, in (0, 1) (default {d['excess_quantile']:g})")  # fmt: skip
    g.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="the networks' arithmetic (the loss kernels stay fp32): bf16 needs avx512_bf16/AMX or a "
                        "bf16 GPU; auto = bf16 for each model where the hardware has it and a bf16-vs-fp32 check on "
                        "the validation normals passes (Spearman of image terms >= 0.999, max map difference <= 1 %% "
                        "of the map range), else fp32; the decision is recorded in the output "
                        "(default fp32)")  # fmt: skip
    g.add_argument("--compile", action="store_true",
                   help="compile the networks with torch.compile (inductor, frozen weights); pays a compile per "
                        "batch shape, wins on large folders (see README)")  # fmt: skip


def scoring_options(args: argparse.Namespace) -> dict:
    """The Scorer keyword arguments of :func:`add_scoring`'s flags (UsageError for flags
    that do not go together)."""
    if args.residual_sigma > 0 and args.map_term != "maha":
        raise UsageError(f"--residual-sigma smooths the residual of --map-term maha, not of --map-term {args.map_term}")
    if args.recon_colour in ("grey", "damped") and args.map_term not in ("abs", "maha"):
        raise UsageError(f"--recon-colour {args.recon_colour} applies to --map-term abs or maha, "
                         f"not to --map-term {args.map_term}")
    return {"score_norm": args.score_norm, "latent_weight": args.latent_weight, "local_topk": args.local_topk,
            "map_sigma": args.map_sigma, "map_norm": args.map_norm,
            "map_term": args.map_term, "map_position": args.map_position,
            "image_score": args.image_score, "residual_sigma": args.residual_sigma,
            "excess_quantile": args.excess_quantile, "recon_colour": args.recon_colour}  # fmt: skip


def network_options(args: argparse.Namespace) -> dict:
    """The Scorer keyword arguments of the network flags of :func:`add_scoring`."""
    return {"precision": args.precision, "compile": args.compile}


def check_precision(args: argparse.Namespace) -> None:
    """UsageError when ``--precision bf16`` cannot run on the chosen device."""
    from ..score.precision import bf16_support

    if getattr(args, "precision", "fp32") != "bf16":
        return
    why = bf16_support(resolve_device(getattr(args, "device", None)))
    if why is not None:
        raise UsageError(f"--precision bf16: {why}; use --precision fp32, or auto (bf16 only where it can run)")


def check_device_backend(args: argparse.Namespace) -> None:
    """UsageError when --device cannot run here or --backend cannot run on it."""
    from .._backends import backends

    try:
        dev = resolve_device(getattr(args, "device", None))
    except DeviceError as e:
        raise UsageError(f"--device: {e}") from None
    b = getattr(args, "backend", None)
    if b in (None, "auto"):
        return
    if not backends()[b]:
        raise UsageError(f"--backend {b} is not available in this install (available: "
                         f"{', '.join(k for k, v in backends().items() if v)})")  # fmt: skip
    if (b == "cpu" and dev.type != "cpu") or (b == "cuda" and dev.type != "cuda"):
        raise UsageError(f"--backend {b} cannot run on device {dev}")


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and prove a file can be written there, before any work."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {p} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write_test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{flag} {p} is not writable: {e.strerror or e}") from None
    return p


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


def add_training_data(p: argparse.ArgumentParser, held_out: str) -> None:
    """The data flags of ``train`` and ``pretrain`` (read by :func:`training_layout`);
    ``held_out`` says what the verb does with the --val-fraction split."""
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="ROOT", help="dataset root holding CATEGORY/ (MVTec AD or MVTec LOCO layout)")
    g.add_argument("--category", metavar="NAME", help="category folder under ROOT")
    g.add_argument("--normal-dir", metavar="DIR",
                   help="Folder layout instead of --data: the normal images (as in eval, a fixed 20 %% is left "
                        "for eval's normal test part unless --normal-test-dir is given)")
    g.add_argument("--normal-test-dir", metavar="DIR",
                   help="Folder layout: normal test images (then every --normal-dir image trains)")
    g.add_argument("--val-fraction", type=fraction, default=0.1,
                   help=f"fraction of train/good held out {held_out} (default 0.1)")
    g.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable images with a warning instead of stopping")  # fmt: skip


def training_layout(args: argparse.Namespace):
    """The training data of ``train`` / ``pretrain`` (``--data``/``--category`` or the
    Folder flags); a layout problem becomes a UsageError naming it."""
    from ..data import DataLayoutError, resolve_layout

    try:
        return resolve_layout(args.data, args.category, args.normal_dir, normal_test_dir=args.normal_test_dir)
    except DataLayoutError as e:
        raise UsageError(str(e)) from None
