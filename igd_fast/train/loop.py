"""The EM training loop of one IGD model (global or local), as an importable API.

E-step (:mod:`.estep`) at the start and before every ``estep_every``-th epoch, M-step
(:mod:`.mstep`) every batch, run setup in :mod:`.setup`.

Exact resume: checkpoints are written atomically at epoch boundaries, and every random
draw of an epoch (shuffling, alpha, gamma, patch subsampling) comes from (seed, epoch,
rank) alone. Ctrl-C or SIGTERM (see :func:`sigterm_as_interrupt`) stops with
:class:`TrainingInterrupted`, which names the intact checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from .. import _dist
from ..checkpoint import rng_state, save_checkpoint, write_run
from ..models import IGD, ModelConfig
from ..outputs import write_text
from .estep import calibrate_batchnorm, estimate_descriptor, model_inputs, validation_loss
from .mstep import LOSS_TERMS, MStep, ReconFn, default_recon_fn, set_lr
from .setup import Loaders, Run, TrainOptions, loaders, setup, wrappers


@dataclass
class TrainResult:
    checkpoint: Path
    model: IGD
    history: list[dict] = field(default_factory=list)
    note: str | None = None  # e.g. why nothing was trained


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN/inf or exploded past DIVERGED_LOSS (or the validation loss or
    a weight did); the message names the step and the terms."""


# A loss beyond this is a diverged model, not a hard batch: every term of a sane model is
# O(1) (MS-SSIM terms <= 2, l_h <= 1, errors of ImageNet-normalised pixels O(10)); a far
# too high --lr took them to 1e12-1e17 while staying finite.
DIVERGED_LOSS = 1e6


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during training; ``checkpoint`` is intact at ``epoch`` (None: none written)."""

    def __init__(self, checkpoint: Path, epoch: int | None) -> None:
        super().__init__(str(checkpoint))
        self.checkpoint, self.epoch = checkpoint, epoch


_stop = {"requested": False, "defer": 0, "unwinding": False}


def stop_requested() -> bool:
    """True once Ctrl-C / SIGTERM arrived inside :func:`sigterm_as_interrupt`."""
    return _stop["requested"]


# Where Python prints and swallows an exception instead of raising it: logging's
# os.register_at_fork hooks (run in the parent around every fork, a DataLoader starting
# workers) and finalisers (a DataLoader iterator's __del__ stopping its workers)
_FORK_HOOKS = {"_acquireLock", "_releaseLock"}


def _swallowed_here(frame) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (
            code.co_name in _FORK_HOOKS and code.co_filename.endswith("logging/__init__.py")
        ):
            return True
        frame = frame.f_back
    return False


@contextmanager
def sigterm_as_interrupt():
    """Within the block SIGINT and SIGTERM both raise KeyboardInterrupt, so a stopped
    run unwinds one way: workers stopped, the last checkpoint named. The signal is also
    remembered: one that lands in an at-fork hook (a DataLoader starting its workers) or a
    finaliser (an iterator's ``__del__`` stopping them), where Python would print and
    swallow it, is not raised there but stops training at the next step boundary
    (:func:`stop_requested`)."""

    def handler(signum, frame):
        if _stop["unwinding"]:  # a second Ctrl-C while the first one stops the workers: let it finish
            return
        _stop["requested"] = True
        if not _stop["defer"] and not _swallowed_here(frame):
            _stop["unwinding"] = True
            raise KeyboardInterrupt

    _stop["requested"] = False
    _stop["unwinding"] = False
    try:
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _write_logs(out_dir: Path, kind: str, history: list[dict]) -> None:
    if not history:
        return
    write_text(out_dir / f"{kind}_log.json", json.dumps(history, indent=1))
    keys = list(history[0].keys())
    for row in history:
        keys += [k for k in row if k not in keys]
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    write_text(out_dir / f"{kind}_log.csv", f.getvalue())


def _epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 131 + rank)


def _fmt_terms(v: list[float]) -> str:
    return ", ".join(f"{k}={x:.6g}" for k, x in zip(LOSS_TERMS, v))


def progress_bar(it, enabled: bool, desc: str, unit: str = "batch"):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


@contextmanager
def uninterrupted():
    """A checkpoint write finishes before an interrupt is acted on (the file would be
    intact anyway, the write being atomic, but the epoch's work would be lost)."""
    _stop["defer"] += 1
    try:
        yield
    finally:
        _stop["defer"] -= 1


def _save(run: Run, epoch: int) -> None:
    with uninterrupted():
        _save_now(run, epoch)


def _save_now(run: Run, epoch: int) -> None:
    save_checkpoint(run.ckpt_path, run.model, run.opt_ae, run.opt_critic, epoch, run.global_step, run.history,
                    run.ckpt_run, rng_state())  # fmt: skip
    _write_logs(run.out, run.cfg.kind, run.history)


def _epoch(run: Run, step: MStep, ld: Loaders, epoch: int, last_saved: int | None) -> dict:
    """One epoch of M-steps; returns its log row (losses, validation, descriptor)."""
    opts, cfg, world = run.opts, run.cfg, run.proc.world
    lr = cfg.epoch_lr(epoch, opts.epochs)
    set_lr((run.opt_ae, run.opt_critic), lr)
    run.model.train()
    ld.sampler.set_epoch(epoch)
    gen = _epoch_generator(opts.seed, epoch, run.proc.rank)
    sums = torch.zeros(len(LOSS_TERMS), dtype=torch.float64)
    n_steps, n_images, t0 = 0, 0, time.perf_counter()
    bar = progress_bar(ld.train, opts.progress and run.proc.is_main, f"{cfg.kind} epoch {epoch + 1}/{opts.epochs}")
    for i, batch in enumerate(bar):
        if opts.max_steps_per_epoch is not None and i >= opts.max_steps_per_epoch:
            break
        images = batch["image"].to(run.device, non_blocking=True)
        x = model_inputs(images, cfg, gen, opts.patches_per_image)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        terms = _dist.all_sum(step(x, gen)) / world
        if stop_requested():
            raise KeyboardInterrupt
        vals = terms.tolist()
        run.global_step += 1
        if not all(math.isfinite(v) and abs(v) <= DIVERGED_LOSS for v in vals):
            last = "none written yet" if last_saved is None else f"{run.ckpt_path} (epoch {last_saved})"
            what = "non-finite" if not all(math.isfinite(v) for v in vals) else f"diverged (> {DIVERGED_LOSS:g})"
            raise NonFiniteLossError(
                f"{what} loss at epoch {epoch + 1}, step {i + 1} (global step {run.global_step}): "
                f"{_fmt_terms(vals)}; training stopped, last good checkpoint: {last} (is --lr {cfg.lr:g} too high?)"
            )
        sums += terms.double()
        n_steps += 1
        n_images += images.shape[0] * world
        if hasattr(bar, "set_postfix"):
            ips = n_images / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix({k: f"{v:.4f}" for k, v in zip(LOSS_TERMS, vals)} | {"img/s": f"{ips:.1f}"})
    secs = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "steps": n_steps, "images": n_images, "seconds": round(secs, 4),
           "images_per_s": n_images / max(secs, 1e-9), "lr": lr}  # fmt: skip
    row |= {k: float(v) / max(n_steps, 1) for k, v in zip(LOSS_TERMS, sums)}
    row |= validation_loss(run.model, ld.val, run.device, opts.backend, run.micro_batch)
    row |= {"mu_norm": float(run.model.descriptor.mu.norm()), "sigma2": float(run.model.descriptor.sigma2)}
    _check_finite_epoch(run, row, epoch, last_saved)
    return row


def _check_finite_epoch(run: Run, row: dict, epoch: int, last_saved: int | None) -> None:
    """NonFiniteLossError (before the epoch is saved) when the validation loss, the
    descriptor or any weight is no longer a finite number: the training losses can stay
    finite while the model has diverged (e.g. a learning rate far too high)."""
    bad = [k for k in ("val_loss", "mu_norm", "sigma2") if k in row and not math.isfinite(row[k])]
    bad += [k for k in ("val_loss",) if k in row and math.isfinite(row[k]) and abs(row[k]) > DIVERGED_LOSS]
    bad += [n for n, p in run.model.named_parameters() if not bool(torch.isfinite(p.detach()).all())][:3]
    if not bad:
        return
    last = "none written yet" if last_saved is None else f"{run.ckpt_path} (epoch {last_saved})"
    vals = ", ".join(f"{k}={row[k]:.6g}" for k in ("loss", "val_loss") if k in row)
    raise NonFiniteLossError(
        f"non-finite or exploded {', '.join(bad)} after epoch {epoch + 1} ({vals}): the model diverged "
        f"(is --lr {run.cfg.lr:g} too high?); training stopped, last good checkpoint: {last}"
    )


def _estep_due(cfg: ModelConfig, epoch: int) -> bool:
    """The descriptor's schedule: every ``estep_every`` epochs (l_h), once at the start
    (Deep SVDD's fixed centre), or never (no latent term)."""
    when = cfg.method.estep
    return (when == "schedule" and epoch % cfg.estep_every == 0) or (when == "once" and epoch == 0)


def train(
    cfg: ModelConfig,
    data_root,
    category: str | None,
    out_dir: str | Path,
    options: TrainOptions | None = None,
    recon_fn: ReconFn | None = None,
    **overrides,
) -> TrainResult:
    """Train one model on ``data_root``/``category`` (MVTec AD or LOCO layout) or on a
    resolved :class:`igd_fast.data.Layout` (``category`` then unused); writes
    ``out_dir/<kind>.pt`` every epoch (atomically),
    ``<kind>_log.csv`` / ``.json`` and ``run.json``. Keyword ``overrides`` set
    :class:`TrainOptions` fields. Works unchanged under ``torchrun``."""
    opts = replace(options or TrainOptions(), **overrides)
    run = setup(cfg, data_root, category, out_dir, opts)
    if run.resumed and run.start_epoch >= opts.epochs:
        note = (f"{run.ckpt_path} already holds {run.start_epoch} epochs (asked for {opts.epochs}): nothing to do; "
                f"raise --epochs to train further")  # fmt: skip
        return TrainResult(run.ckpt_path, run.model.eval(), run.history, note)
    ae, critic = wrappers(run)
    step = MStep(run.model, run.opt_ae, run.opt_critic, recon_fn or default_recon_fn(cfg, opts.backend), ae, critic,
                 run.amp_dtype, run.micro_batch)  # fmt: skip
    ld = loaders(run)
    main = run.proc.is_main
    if main:
        run.out.mkdir(parents=True, exist_ok=True)
        entry = {"config": cfg.to_dict(), "options": asdict(opts), "init_encoder": run.init_info}
        write_run(run.out, {**run.record, "models": {cfg.kind: entry}})
    last_saved: int | None = run.start_epoch if run.resumed else None
    try:
        if not run.resumed:
            calibrate_batchnorm(run.model, ld.full, run.device, run.channels_last, run.micro_batch)
        if not run.resumed and opts.epochs == 0:
            # epochs=0: initialise (+ E-step) and save, e.g. to inspect mu/sigma
            estimate_descriptor(run.model, ld.estep, run.device, run.channels_last, run.micro_batch)
            if main:
                _save(run, 0)
            last_saved = 0
        for epoch in range(run.start_epoch, opts.epochs):
            if _estep_due(cfg, epoch):
                estimate_descriptor(run.model, ld.estep, run.device, run.channels_last, run.micro_batch)
            if stop_requested():
                raise KeyboardInterrupt
            row = _epoch(run, step, ld, epoch, last_saved)
            if stop_requested():  # the epoch's validation swallowed the interrupt: not saved
                raise KeyboardInterrupt
            run.history.append(row)
            if main:
                _save(run, epoch + 1)
            last_saved = epoch + 1
            if stop_requested():  # arrived while saving: the new checkpoint is complete
                raise KeyboardInterrupt
            _dist.barrier()
    except KeyboardInterrupt:
        _stop["unwinding"] = True  # a second Ctrl-C must not break the workers' shutdown below
        raise TrainingInterrupted(run.ckpt_path, last_saved) from None
    finally:
        ld.close()  # DataLoader workers end here, also when interrupted
    _dist.barrier()
    run.model.eval()
    return TrainResult(run.ckpt_path, run.model, run.history)


TRAIN_OPTION_NAMES = tuple(f.name for f in fields(TrainOptions))
