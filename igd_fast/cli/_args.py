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
    (``scoring``: the scoring verbs' worker default, none on 2 cores, and --compile)."""
    p.add_argument("--batch-size", type=positive_int, default=batch_default,
                   help=f"images per batch (default {batch_default})")
    workers = default_score_workers() if scoring else default_workers()
    rule = "0 on 2 cores or fewer, else " if scoring else ""
    p.add_argument("--workers", type=non_negative_int, default=workers,
                   help=f"DataLoader worker processes reading images (default {workers} on this machine: "
                        f"{rule}one per two cores, at most 4; 0 reads in the main process)")
    add_device(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if scoring:
        add_compile(p)


def add_device(p: argparse.ArgumentParser) -> None:
    """--device and --backend (every verb that runs a model)."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--backend", default=None, choices=("auto", "torch", "cpu", "cuda", "triton"),
                   help="MS-SSIM kernel backend (default auto: by device)")  # fmt: skip


def add_compile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="compile the networks with torch.compile (inductor, frozen weights); pays a compile per "
                        "batch shape, wins on large folders (see docs/benchmarks.md)")  # fmt: skip


def check_precision(precision: str, device: str | None) -> None:
    """UsageError when ``--precision bf16`` (a flag or the model's recipe) cannot run on ``device``."""
    from ..score.precision import bf16_support

    if precision != "bf16":
        return
    why = bf16_support(resolve_device(device))
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
