"""Run setup for one training run: options and their checks, device, datasets and the
validation split, the model (fresh, or resumed after checking the checkpoint matches),
wrappers (DDP, compile) and the DataLoaders."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from .. import _dist
from ..checkpoint import MODEL_FILES, RUN_JSON, CheckpointError, load_checkpoint, read_run, set_rng_state
from ..data import Layout, MVTecDataset, resolve_layout, split_train_val
from ..models import IGD, ModelConfig, distill_encoder, init_encoder
from .estep import model_inputs
from .mstep import autoencoder_step, make_optimizers

# Training memory per model input, measured (peak RSS of one M-step, fp32, CPU) on this
# package's networks: 55-60 bytes per (width × input pixel) for both kinds, i.e.
# ~250 MB per 256² image at width 64 (global) and ~3.6 MB per 32² patch (local):
# the encoder, both decoder passes, the critic and the MS-SSIM loss together.
BYTES_PER_WIDTH_PIXEL = 64
DEFAULT_MEMORY_BUDGET = 3.0e9  # activations; weights, optimiser state and data come on top


def auto_micro_batch(cfg: ModelConfig, budget_bytes: float = DEFAULT_MEMORY_BUDGET) -> int:
    """Inputs per forward/backward that keep the activations of one step within
    ``budget_bytes`` (at least 2: interpolation pairs need two samples). With every
    default this is 11 images (global) or 715 patches (local)."""
    per_input = BYTES_PER_WIDTH_PIXEL * max(cfg.width, cfg.critic_width or 0) * cfg.input_size**2
    return max(2, int(budget_bytes // per_input))


@dataclass
class TrainOptions:
    """How to train (the model itself is described by :class:`ModelConfig`)."""

    epochs: int = 256
    batch_size: int = 16
    workers: int = field(default_factory=_dist.default_workers)
    seed: int = 0
    val_fraction: float = 0.1
    device: str | None = None  # None: cuda:<LOCAL_RANK> when available, else cpu
    amp: bool | None = None  # bf16 autocast; None: on for CUDA
    compile: bool = False
    channels_last: bool | None = None  # None: on for CUDA (on the CPU a 1.4x / 1.15x step, README, opt-in)
    backend: str | None = None  # MS-SSIM backend; None: by device
    skip_corrupt: bool = False
    init_encoder: str | None = None
    distill_teacher: str | None = None
    distill_steps: int = 1000
    patches_per_image: int | None = None  # local model: random subset per image (None: all)
    micro_batch: int | None = None  # inputs per forward/backward; None: auto_micro_batch
    resume: bool = False
    overwrite: bool = False  # replace a model already in out_dir (else refused: resume, or another folder)
    progress: bool = True
    max_steps_per_epoch: int | None = None
    preset: str | None = None  # the CLI's --preset, recorded with the values it set (others explicit)
    preset_applied: dict | None = None
    preset_choice: dict | None = None  # --preset auto: what it measured and chose

    def check(self) -> None:
        """ValueError naming the first option out of range."""
        for name, low in (("epochs", 0), ("batch_size", 1), ("workers", 0), ("distill_steps", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("patches_per_image", "micro_batch", "max_steps_per_epoch"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or unset), got {v!r}")
        if not (isinstance(self.val_fraction, float | int) and 0.0 <= self.val_fraction < 1.0):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the model in --out, --overwrite replaces it: give one of them")


# options whose change would alter the data a resumed run sees or its split
RESUME_MUST_MATCH = ("seed", "batch_size", "val_fraction")


@dataclass
class Run:
    """Everything one training run holds between setup and the epoch loop."""

    cfg: ModelConfig
    opts: TrainOptions
    out: Path
    proc: _dist.ProcessInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    micro_batch: int
    train_ds: MVTecDataset
    val_ds: MVTecDataset
    record: dict  # run.json contents: data, split
    model: IGD
    opt_ae: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer | None
    ckpt_path: Path
    start_epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    resumed: bool = False
    init_info: dict | None = None  # what --init-encoder loaded (None: fresh weights, or resumed)

    @property
    def ckpt_run(self) -> dict:
        """What every checkpoint stores under ``run``."""
        return {**self.record, "options": asdict(self.opts), "init_encoder": self.init_info}


def datasets(cfg: ModelConfig, data, category: str | None, opts: TrainOptions):
    """Training and validation datasets of a layout (``data``: a dataset root with
    ``category``, or a resolved :class:`igd_fast.data.Layout`). The validation normals
    are the layout's own (MVTec LOCO's validation/good) or, otherwise, ``val_fraction``
    of the training normals split off by ``seed``."""
    layout = data if isinstance(data, Layout) else resolve_layout(data, category)
    files = layout.train_files()
    own_val = layout.validation_files()
    tr, va = (files, own_val) if own_val else split_train_val(files, opts.val_fraction, opts.seed)
    kw = dict(image_size=cfg.image_size, skip_corrupt=opts.skip_corrupt)
    train_ds = MVTecDataset(layout.root.parent, layout.name, "train", files=tr, **kw)
    val_ds = MVTecDataset(layout.root.parent, layout.name, "val", files=va, **kw) if va else _empty(layout, kw)
    if len(train_ds) < 2:
        raise ValueError(f"need at least 2 training images, {layout.root} gives {len(train_ds)}")
    base = layout.root.resolve()  # run.json paths are relative to it (validation_files())
    record = {
        "data_root": str(base.parent),
        "category": base.name,
        "layout": layout.kind,
        "seed": opts.seed,
        "val_fraction": opts.val_fraction,
        "val_files": [os.path.relpath(p.resolve(), base) for p in val_ds.files],
        "train_files": [os.path.relpath(p.resolve(), base) for p in train_ds.files],
    }
    return train_ds, val_ds, record


def _empty(layout, kw) -> MVTecDataset:
    return MVTecDataset(layout.root.parent, layout.name, "val", files=[], **kw)


def _preset_hint(saved: str | None, asked: str | None) -> str:
    """How to ask for the checkpoint's preset again, where the presets differ (a checkpoint from
    before ``--preset auto`` became the default records none: the paper's defaults)."""
    saved, asked = saved or "paper", asked or "paper"
    return "" if saved == asked else f" (it was trained with --preset {saved}: resume with --preset {saved})"


def _check_resume(ck: dict, path: Path, cfg: ModelConfig, opts: TrainOptions, record: dict) -> None:
    """Refuse a resume that would silently train another model or on another split."""
    # through ModelConfig: a field added since the checkpoint was written takes its default
    saved, asked = ModelConfig.from_dict(ck["config"]).to_dict(), cfg.to_dict()
    old = ck.get("run", {}).get("options", {})
    if saved != asked:
        diff = {k: (v, asked.get(k)) for k, v in saved.items() if asked.get(k) != v}
        raise ValueError(
            f"--resume: {path} was trained with another model config: "
            + ", ".join(f"{k} {a!r} in the checkpoint, {b!r} requested" for k, (a, b) in diff.items())
            + _preset_hint(old.get("preset", "paper"), opts.preset)
        )
    for k in RESUME_MUST_MATCH:
        if k in old and old[k] != getattr(opts, k):
            flag = "--" + k.replace("_", "-")
            raise ValueError(
                f"--resume: {path} was trained with {flag} {old[k]!r}, this run asks for {getattr(opts, k)!r}; "
                f"resume with {flag} {old[k]!r}, or train into another --out"
            )
    old_val = ck.get("run", {}).get("val_files")
    if old_val is not None and sorted(old_val) != sorted(record["val_files"]):
        raise ValueError(
            f"--resume: the validation split of {path} no longer matches the data (train/good changed): "
            f"it held out {len(old_val)} files, the data now gives {len(record['val_files'])}"
        )


# what run.json must agree on for two models of one directory to share its validation split
SPLIT_KEYS = ("data_root", "category", "layout", "seed", "val_fraction", "val_files")


def existing_model(out: Path, kind: str, opts: TrainOptions) -> str | None:
    """Why training ``kind`` into ``out`` would silently replace a trained model, or None:
    a checkpoint of that kind exists and neither ``resume`` nor ``overwrite`` is set."""
    ckpt = out / f"{kind}.pt"
    if opts.resume or opts.overwrite or not ckpt.exists():
        return None
    return (f"{ckpt} already holds a trained {kind} model; continue it with --resume, train into a new --out, or "
            "pass --overwrite to replace it")  # fmt: skip


def _check_out_models(out: Path, cfg: ModelConfig, opts: TrainOptions, record: dict) -> list[Path]:
    """Refuse (ValueError naming the file and the way out) to mix this run into a model
    directory it does not belong to; with ``overwrite`` the files to delete first."""
    why = existing_model(out, cfg.kind, opts)
    if why is not None:
        raise ValueError(why)
    run_json = out / RUN_JSON
    if not run_json.exists():
        return []
    try:
        old = read_run(out)
    except CheckpointError as e:
        if opts.overwrite:
            return [run_json]
        raise ValueError(f"{e}; move it away, train into a new --out, or pass --overwrite to replace it") from None
    others = [out / f for f in MODEL_FILES if f != f"{cfg.kind}.pt" and (out / f).exists()]
    differs = [k for k in SPLIT_KEYS if k in old and old[k] != record.get(k)]
    if not others or not differs:
        return []
    if not opts.overwrite:
        keys = ", ".join(k for k in differs if k != "val_files") or "the validation files"
        raise ValueError(
            f"{', '.join(str(o) for o in others)} in --out was trained on another split ({keys} differ from this run, "
            f"{run_json}); its run.json cannot describe both models: train with the same data and --seed / "
            "--val-fraction, into a new --out, or pass --overwrite to replace the folder's models"
        )
    return [*others, run_json]


def _remove_for_overwrite(out: Path, kind: str, stale: list[Path]) -> None:
    """--overwrite: this kind's checkpoint and logs, the cached threshold and whatever
    ``stale`` names (models of another split, their logs, run.json) go before training."""
    files = [out / f"{kind}.pt", out / f"{kind}_log.json", out / f"{kind}_log.csv", out / "threshold.json", *stale]
    for p in stale:
        if p.suffix == ".pt":
            files += [out / f"{p.stem}_log.json", out / f"{p.stem}_log.csv"]
    for p in files:
        if p.is_file():
            p.unlink()


def _model(run_cfg: ModelConfig, opts: TrainOptions, ckpt_path: Path, record: dict, device, train_ds):
    model = IGD(run_cfg)
    opt_ae, opt_critic = make_optimizers(model)
    state = {"start_epoch": 0, "global_step": 0, "history": [], "resumed": False, "init_info": None}
    if opts.resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, "cpu")
        _check_resume(ck, ckpt_path, run_cfg, opts, record)
        missing = [k for k in ("opt_ae", "rng", "epoch", "global_step")
                   if not isinstance(ck.get(k), dict if k in ("opt_ae", "rng") else int)]  # fmt: skip
        if opt_critic is not None and not isinstance(ck.get("opt_critic"), dict):
            missing.append("opt_critic")
        if missing:
            raise ValueError(
                f"--resume: {ckpt_path} holds no training state to continue from ({', '.join(missing)} missing: it "
                "was saved without its optimisers, e.g. by save_checkpoint(path, model)); training could not "
                "continue exactly: train into a new --out (or pass --overwrite to start this one afresh)"
            )
        model.load_state_dict(ck["model"])
        model.to(device)
        opt_ae.load_state_dict(ck["opt_ae"])
        if opt_critic is not None:
            opt_critic.load_state_dict(ck["opt_critic"])
        state = {"start_epoch": ck["epoch"], "global_step": ck["global_step"], "history": list(ck["history"]),
                 "resumed": True, "init_info": ck.get("run", {}).get("init_encoder")}  # fmt: skip
        set_rng_state(ck["rng"])
        return model, opt_ae, opt_critic, state
    if opts.init_encoder:
        state["init_info"] = init_encoder(model.encoder, opts.init_encoder, run_cfg)
    model.to(device)
    if opts.distill_teacher:
        # identical on every rank: same data order, same initial weights
        kd_loader = DataLoader(train_ds, batch_size=opts.batch_size, shuffle=False, num_workers=opts.workers)
        kd_batches = _ImageBatches(kd_loader, run_cfg, device)
        distill_encoder(model.encoder, opts.distill_teacher, kd_batches, opts.distill_steps, device=device)
    return model, opt_ae, opt_critic, state


def setup(cfg: ModelConfig, data_root, category: str, out_dir, opts: TrainOptions) -> Run:
    opts.check()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    wanted = _dist.resolve_device(opts.device) if opts.device is not None else None
    proc = _dist.init("nccl" if (wanted or _dist.resolve_device(None)).type == "cuda" else "gloo")
    device = _dist.resolve_device(opts.device, proc.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_amp = opts.amp if opts.amp is not None else device.type == "cuda"
    cl = opts.channels_last if opts.channels_last is not None else device.type == "cuda"
    # seeded before the model is built: the fresh initial weights depend on the seed
    # alone (a resumed run then restores the checkpoint's RNG states on top)
    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    train_ds, val_ds, record = datasets(cfg, data_root, category, opts)
    stale = _check_out_models(out, cfg, opts, record)
    if opts.overwrite and proc.is_main:
        _remove_for_overwrite(out, cfg.kind, stale)
    ckpt_path = out / f"{cfg.kind}.pt"
    model, opt_ae, opt_critic, state = _model(cfg, opts, ckpt_path, record, device, train_ds)
    if cl:
        model.to(memory_format=torch.channels_last)
    mb = opts.micro_batch or auto_micro_batch(cfg)
    return Run(cfg, opts, out, proc, device, torch.bfloat16 if use_amp else None, cl, mb, train_ds, val_ds, record,
               model, opt_ae, opt_critic, ckpt_path, **state)  # fmt: skip


def wrappers(run: Run) -> tuple[nn.Module, nn.Module]:
    """(autoencoder step, critic) as the M-step calls them: DDP and/or compiled."""
    ae: nn.Module = autoencoder_step(run.model)
    critic: nn.Module | None = run.model.critic
    if run.proc.active:
        ids = [run.device.index] if run.device.type == "cuda" else None
        ae = nn.parallel.DistributedDataParallel(ae, device_ids=ids)
        if critic is not None:
            critic = nn.parallel.DistributedDataParallel(critic, device_ids=ids)
    if run.opts.compile:
        ae = torch.compile(ae)
        critic = torch.compile(critic) if critic is not None else None
    return ae, critic


@dataclass
class Loaders:
    train: DataLoader
    sampler: DistributedSampler
    estep: DataLoader  # this rank's shard of the training images, no padding
    val: DataLoader  # this rank's shard of the validation images
    full: DataLoader  # every training image (BatchNorm calibration, same on all ranks)

    def close(self) -> None:
        """Stop the persistent workers now rather than whenever the loaders are collected
        (an exception's traceback keeps them alive)."""
        for dl in (self.train, self.estep, self.val, self.full):
            it = getattr(dl, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()


def loaders(run: Run) -> Loaders:
    opts, world, rank = run.opts, run.proc.world, run.proc.rank
    pin = run.device.type == "cuda"
    sampler = DistributedSampler(run.train_ds, num_replicas=world, rank=rank, shuffle=True, seed=opts.seed)
    if len(sampler) < 2:
        raise ValueError(
            f"each of {world} processes needs >= 2 training images per batch; "
            f"{len(run.train_ds)} training images are too few"
        )
    bs = min(opts.batch_size, len(sampler))
    nw = opts.workers
    train = DataLoader(run.train_ds, batch_size=bs, sampler=sampler, num_workers=nw, drop_last=True, pin_memory=pin,
                       persistent_workers=nw > 0)  # fmt: skip
    # E-step / validation shards without DistributedSampler's padding: exact sums
    shard = Subset(run.train_ds, list(range(rank, len(run.train_ds), world)))
    estep = DataLoader(shard, batch_size=opts.batch_size, num_workers=nw, pin_memory=pin)
    val = DataLoader(Subset(run.val_ds, list(range(rank, len(run.val_ds), world))), batch_size=opts.batch_size,
                     num_workers=nw)  # fmt: skip
    full = DataLoader(run.train_ds, batch_size=min(opts.batch_size, len(run.train_ds)), num_workers=nw, drop_last=True)
    return Loaders(train, sampler, estep, val, full)


class _ImageBatches:
    """Re-iterable view of a loader as model inputs (for KD pre-training)."""

    def __init__(self, loader: DataLoader, cfg: ModelConfig, device: torch.device) -> None:
        self.loader, self.cfg, self.device = loader, cfg, device

    def __iter__(self):
        for b in self.loader:
            yield model_inputs(b["image"].to(self.device), self.cfg)
