"""``train --model defect``: the defect model of a model directory, trained on the same
split as its IGD models (``run.json``), its normaliser fitted on the validation normals, and
written to ``defect.pt`` (:func:`igd_fast.checkpoint.save_defect_checkpoint`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from .._dist import resolve_device
from ..checkpoint import save_defect_checkpoint, write_run
from ..models.defect import DefectConfig
from .defect import DefectStep, fit_normaliser, read_working, train_defect_model
from .loop import TrainResult, stop_requested
from .setup import TrainOptions, _check_out_models, _remove_for_overwrite, datasets


def use_bf16(opts: TrainOptions, device: torch.device) -> bool:
    """bf16 autocast: ``--amp`` when given, else wherever the device has bf16 (on the CPU's
    avx512_bf16 the networks ran ~2x faster; weights and losses stay fp32)."""
    from ..score.precision import bf16_where_native

    return bf16_where_native(opts.amp, device)[0]


def train_defect(cfg: DefectConfig, data, out_dir: str | Path, opts: TrainOptions) -> TrainResult:
    """Train ``cfg``'s defect model on ``data`` (a resolved layout) into ``out_dir``."""
    out = Path(out_dir)
    ckpt = out / "defect.pt"
    train_ds, val_ds, record = datasets(cfg, data, None, opts)
    stale = _check_out_models(out, cfg, opts, record)
    if opts.resume and ckpt.is_file():  # a defect model is written once, when trained
        return TrainResult(ckpt, None, [], f"{ckpt} is already trained: nothing to do (--overwrite retrains it)")
    if opts.overwrite:
        _remove_for_overwrite(out, cfg.kind, stale)
    images = [read_working(p, cfg.image_size) for p in train_ds.files]
    normals = [read_working(p, cfg.image_size) for p in val_ds.files]
    device = resolve_device(opts.device)
    amp = use_bf16(opts, device)
    bar = tqdm(total=cfg.steps, desc="defect model", unit="step", disable=not opts.progress)

    def on_step(e: DefectStep) -> None:
        bar.update(1)
        bar.set_postfix(seg=f"{e.seg:.3f}", repair=f"{e.repair:.3f}", refresh=False)
        if stop_requested():
            raise KeyboardInterrupt

    torch.manual_seed(opts.seed)
    try:
        model, log = train_defect_model(cfg, images, opts.seed, min(opts.workers, 1), amp, opts.backend, on_step,
                                        device)  # fmt: skip
    finally:
        bar.close()
    norm = fit_normaliser(model, normals, opts.seed, amp)
    history = [asdict(e) for e in log]
    out.mkdir(parents=True, exist_ok=True)
    entry = {"config": cfg.to_dict(), "options": asdict(opts), "bf16": amp, "normaliser": norm,
             "seconds": sum(e.seconds for e in log)}  # fmt: skip
    write_run(out, {**record, "models": {cfg.kind: entry}})
    save_defect_checkpoint(ckpt, model, norm, history, {**record, "options": asdict(opts)})
    return TrainResult(ckpt, model, [{"loss": history[-1]["seg"] + history[-1]["repair"]}] if history else [])
