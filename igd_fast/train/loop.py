"""The EM training loop of one IGD model (global or local), as an importable API.

E-step: mu = mean f(x), sigma^2 = mean ||f(x) - mu||^2 over the training normals (eval
mode, no gradient), at the start and before every ``estep_every``-th epoch; under
torch.distributed the sums of z, of the counts and then of ||z - mu||^2 are
all-reduced, so N processes give the single-process values.
M-step (every batch): autoencoder loss l_r + l_h + lambda3 ||d(g(z_alpha))||^2, then
the critic loss ||d(g(z_alpha)) - alpha||^2 + ||d(gamma x + (1 - gamma) x_hat)||^2,
alpha ~ U(0, 0.5) pairing each sample with its neighbour in the batch.

Exact resume: checkpoints are written at epoch boundaries, and every random draw of an
epoch (shuffling, alpha, gamma, patch subsampling) comes from (seed, epoch, rank) alone.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from ..data import MVTecDataset
from ..models import IGD, ModelConfig, distill_encoder, load_trunk
from ..ops.patches import extract_patches
from ..ops.ssim import recon_loss
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_run

LOSS_TERMS = ("l_r", "l_h", "l_inter", "l_d", "loss")


@dataclass
class TrainOptions:
    """How to train (the model itself is described by :class:`ModelConfig`)."""

    epochs: int = 256
    batch_size: int = 16
    workers: int = 4
    seed: int = 0
    val_fraction: float = 0.1
    device: str | None = None  # None: cuda:<LOCAL_RANK> when available, else cpu
    amp: bool | None = None  # bf16 autocast; None: on for CUDA
    compile: bool = False
    channels_last: bool | None = None  # None: on for CUDA
    backend: str | None = None  # MS-SSIM backend; None: by device
    skip_corrupt: bool = False
    init_encoder: str | None = None
    distill_teacher: str | None = None
    distill_steps: int = 1000
    patches_per_image: int | None = None  # local model: random subset per image (None: all)
    resume: bool = False
    progress: bool = True
    max_steps_per_epoch: int | None = None


@dataclass
class TrainResult:
    checkpoint: Path
    model: IGD
    history: list[dict] = field(default_factory=list)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN/inf; the message names the step and the terms."""


# ---------------------------------------------------------------- distributed helpers


def _dist_info(use_cuda: bool) -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the process group under torchrun
    (nccl for CUDA training, gloo for CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _all_sum(t: Tensor) -> Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------- model pieces


class AutoEncoderStep(nn.Module):
    """The autoencoder part of one M-step as one module (one DDP forward):
    returns z, x_hat = g(z) and x_alpha = g(alpha z + (1 - alpha) z_rolled)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = self.encoder(x)
        x_hat = self.decoder(z)
        # pair each sample with its neighbour: x1 != x2 for distinct images (paper eq. 9)
        z_mix = alpha * z + (1 - alpha) * z.roll(1, 0)
        return z, x_hat, self.decoder(z_mix)


ReconFn = Callable[[Tensor, Tensor], Tensor]


def default_recon_fn(cfg: ModelConfig, backend: str | None = None) -> ReconFn:
    """Batch-mean l_r through the fused MS-SSIM kernels (igd_fast.recon_loss)."""
    ms = cfg.msssim()

    def fn(x: Tensor, x_hat: Tensor) -> Tensor:
        return recon_loss(x.contiguous(), x_hat.contiguous(), cfg.rho, ms, "mean", backend)

    return fn


class MStep:
    """One M-step (autoencoder update, then critic update) of an :class:`IGD` model.

    ``ae`` / ``critic`` may be DDP- or torch.compile-wrapped versions of the model's
    modules; ``recon_fn(x, x_hat) -> scalar`` defaults to the fused loss (the benchmark
    swaps in pytorch_msssim). Returns the detached loss terms as a 5-vector."""

    def __init__(
        self,
        model: IGD,
        opt_ae: torch.optim.Optimizer,
        opt_critic: torch.optim.Optimizer,
        recon_fn: ReconFn | None = None,
        ae: nn.Module | None = None,
        critic: nn.Module | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.opt_ae, self.opt_critic = model, opt_ae, opt_critic
        self.cfg = model.config
        self.recon_fn = recon_fn or default_recon_fn(self.cfg)
        self.ae = ae if ae is not None else AutoEncoderStep(model.encoder, model.decoder)
        self.critic = critic if critic is not None else model.critic
        self.amp_dtype = amp_dtype

    def _autocast(self, x: Tensor):
        return torch.autocast(x.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        cfg, n = self.cfg, x.shape[0]
        alpha = (torch.rand(n, 1, generator=gen) * 0.5).to(x.device)
        if cfg.gamma is None:
            gamma = torch.rand(n, 1, 1, 1, generator=gen).to(x.device)
        else:
            gamma = torch.full((n, 1, 1, 1), cfg.gamma, device=x.device)

        # autoencoder: l_r + l_h + lambda3 * ||d(x_alpha)||^2
        with self._autocast(x):
            z, x_hat, x_alpha = self.ae(x, alpha)
        critic = self.model.critic
        # critic weights as constants here: its gradient comes from its own loss only
        # (detached params also keep DDP's reducer of the critic out of this backward)
        frozen = {k: v.detach() for k, v in critic.named_parameters()}
        frozen.update(dict(critic.named_buffers()))
        with self._autocast(x):
            d_alpha = functional_call(critic, frozen, (x_alpha,))
        l_r = self.recon_fn(x, x_hat.float())
        l_h = self.model.descriptor.l_h(z).mean()
        l_inter = d_alpha.float().pow(2).mean()
        loss = l_r + l_h + cfg.lambda3 * l_inter
        self.opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_ae.step()

        # critic: ||d(x_alpha) - alpha||^2 + ||d(gamma x + (1 - gamma) x_hat)||^2
        x_mix = gamma * x + (1 - gamma) * x_hat.detach().to(x.dtype)
        with self._autocast(x):
            d = self.critic(torch.cat([x_alpha.detach().to(x.dtype), x_mix])).float()
        l_d = (d[:n] - alpha.view(-1)).pow(2).mean() + d[n:].pow(2).mean()
        self.opt_critic.zero_grad(set_to_none=True)
        l_d.backward()
        self.opt_critic.step()
        return torch.stack([l_r, l_h, l_inter, l_d, loss]).detach().float()


def make_optimizers(model: IGD) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    c = model.config
    ae_params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    return (
        torch.optim.Adam(ae_params, lr=c.lr, weight_decay=c.weight_decay, foreach=True),
        torch.optim.Adam(model.critic.parameters(), lr=c.lr, weight_decay=c.weight_decay, foreach=True),
    )


def model_inputs(
    images: Tensor, cfg: ModelConfig, gen: torch.Generator | None = None, per_image: int | None = None
) -> Tensor:
    """What the model sees: the images (global) or their patches (local), optionally a
    random ``per_image`` subset of each image's patches."""
    if cfg.kind == "global":
        return images
    patches, grid = extract_patches(images, cfg.patch_size, cfg.patch_stride)
    if per_image is None or per_image >= grid.count:
        return patches
    n = images.shape[0]
    sel = torch.stack([torch.randperm(grid.count, generator=gen)[:per_image] for _ in range(n)])
    idx = (sel + torch.arange(n)[:, None] * grid.count).reshape(-1).to(images.device)
    return patches[idx]


# ---------------------------------------------------------------- E-step and validation


@torch.no_grad()
def estimate_descriptor(
    model: IGD, loader: DataLoader, device: torch.device, channels_last: bool = False
) -> tuple[Tensor, Tensor, int]:
    """E-step over ``loader`` (this rank's shard): sets and returns (mu, sigma2, count)."""
    was_training = model.training
    model.eval()
    cfg = model.config
    zs = []
    for batch in loader:
        x = model_inputs(batch["image"].to(device, non_blocking=True), cfg)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        zs.append(model.encoder(x).double())
    z = torch.cat(zs) if zs else torch.zeros(0, cfg.latent, dtype=torch.float64, device=device)
    stats = torch.cat([z.sum(0), torch.tensor([float(z.shape[0])], dtype=torch.float64, device=device)])
    _all_sum(stats)
    count = int(stats[-1].item())
    if count == 0:
        raise ValueError("E-step: no training samples")
    mu = stats[:-1] / count
    sq = _all_sum((z - mu).pow(2).sum().reshape(1))
    sigma2 = sq / count
    model.descriptor.set(mu.float(), float(sigma2))
    model.train(was_training)
    return model.descriptor.mu.clone(), model.descriptor.sigma2.clone(), count


@torch.no_grad()
def calibrate_batchnorm(model: IGD, loader: DataLoader, device: torch.device, channels_last: bool = False) -> None:
    """Set every BatchNorm's running stats to the average of its batch statistics over
    ``loader`` (train-mode forward, no gradient). Run once before the first E-step: the
    E-step and scoring use eval mode, and the initial running stats (0, 1) would give
    latents far from the train-mode ones the M-step sees (l_h stuck at 1, no gradient).
    Every rank passes over the same full loader, so all ranks (and 1 process) agree."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    was_training = model.training
    model.train()
    cfg = model.config
    for batch in loader:
        x = model_inputs(batch["image"].to(device), cfg)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z, x_hat = model(x)
        model.critic(x_hat)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)


@torch.no_grad()
def validation_loss(
    model: IGD, loader: DataLoader, device: torch.device, backend: str | None = None
) -> dict[str, float]:
    """Mean l_r and l_h (and their sum) over this rank's validation shard, all-reduced."""
    was_training = model.training
    model.eval()
    cfg = model.config
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in loader:
        x = model_inputs(batch["image"].to(device), cfg)
        z, x_hat = model(x)
        lr = recon_loss(x.contiguous(), x_hat.float().contiguous(), cfg.rho, cfg.msssim(), "none", backend)
        lh = model.descriptor.l_h(z)
        acc += torch.stack([lr.sum(), lh.sum(), torch.tensor(float(x.shape[0]), device=device)]).double()
    _all_sum(acc)
    model.train(was_training)
    if acc[2] == 0:
        return {}
    lr, lh = float(acc[0] / acc[2]), float(acc[1] / acc[2])
    return {"val_l_r": lr, "val_l_h": lh, "val_loss": lr + lh}


# ---------------------------------------------------------------- logging


def _write_logs(out_dir: Path, kind: str, history: list[dict]) -> None:
    if not history:
        return
    (out_dir / f"{kind}_log.json").write_text(json.dumps(history, indent=1))
    keys = list(history[0].keys())
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(out_dir / f"{kind}_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def _epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 131 + rank)


def _fmt_terms(v: list[float]) -> str:
    return ", ".join(f"{k}={x:.6g}" for k, x in zip(LOSS_TERMS, v))


# ---------------------------------------------------------------- the loop


def train(
    cfg: ModelConfig,
    data_root: str | Path,
    category: str,
    out_dir: str | Path,
    options: TrainOptions | None = None,
    recon_fn: ReconFn | None = None,
    **overrides,
) -> TrainResult:
    """Train one IGD model; writes ``out_dir/<kind>.pt`` every epoch (atomically),
    ``<kind>_log.csv`` / ``.json`` and ``run.json``. Keyword ``overrides`` set
    :class:`TrainOptions` fields. Works unchanged under ``torchrun``."""
    opts = replace(options or TrainOptions(), **overrides)
    out = Path(out_dir)
    use_cuda = torch.device(opts.device).type == "cuda" if opts.device else torch.cuda.is_available()
    rank, world, local_rank = _dist_info(use_cuda)
    if opts.device is not None:
        device = torch.device(opts.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_amp = opts.amp if opts.amp is not None else device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp else None
    cl = opts.channels_last if opts.channels_last is not None else device.type == "cuda"

    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)

    train_ds = MVTecDataset(
        data_root, category, "train", cfg.image_size, opts.val_fraction, opts.seed, skip_corrupt=opts.skip_corrupt
    )
    val_ds = MVTecDataset(
        data_root, category, "val", cfg.image_size, opts.val_fraction, opts.seed, skip_corrupt=opts.skip_corrupt
    )
    if len(train_ds) < 2:
        raise ValueError(f"need at least 2 training images, {data_root}/{category} gives {len(train_ds)}")
    cat_dir = Path(data_root).resolve() / category
    run = {
        "data_root": str(Path(data_root).resolve()),
        "category": category,
        "seed": opts.seed,
        "val_fraction": opts.val_fraction,
        "val_files": [str(p.resolve().relative_to(cat_dir)) for p in val_ds.files],
        "train_files": [str(p.resolve().relative_to(cat_dir)) for p in train_ds.files],
    }

    model = IGD(cfg)
    opt_ae, opt_critic = make_optimizers(model)
    ckpt_path = out / f"{cfg.kind}.pt"
    start_epoch, global_step, history = 0, 0, []
    resumed = opts.resume and ckpt_path.is_file()
    if resumed:
        ck = load_checkpoint(ckpt_path, "cpu")
        if ck["config"] != cfg.to_dict():
            raise ValueError(
                f"--resume: {ckpt_path} was trained with another model config:\n"
                f"  checkpoint {ck['config']}\n  requested  {cfg.to_dict()}"
            )
        model.load_state_dict(ck["model"])
        model.to(device)
        opt_ae.load_state_dict(ck["opt_ae"])
        opt_critic.load_state_dict(ck["opt_critic"])
        start_epoch, global_step, history = ck["epoch"], ck["global_step"], list(ck["history"])
        set_rng_state(ck["rng"])
    else:
        if opts.init_encoder:
            load_trunk(model.encoder, opts.init_encoder)
        model.to(device)
        if opts.distill_teacher:
            # identical on every rank: same data order, same initial weights
            kd_loader = DataLoader(train_ds, batch_size=opts.batch_size, shuffle=False, num_workers=opts.workers)
            kd_batches = _ImageBatches(kd_loader, cfg, device)
            distill_encoder(model.encoder, opts.distill_teacher, kd_batches, opts.distill_steps, device=device)
    if cl:
        model.to(memory_format=torch.channels_last)

    ae: nn.Module = AutoEncoderStep(model.encoder, model.decoder)
    critic: nn.Module = model.critic
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        ae = nn.parallel.DistributedDataParallel(ae, device_ids=ids)
        critic = nn.parallel.DistributedDataParallel(critic, device_ids=ids)
    if opts.compile:
        ae, critic = torch.compile(ae), torch.compile(critic)
    step = MStep(model, opt_ae, opt_critic, recon_fn or default_recon_fn(cfg, opts.backend), ae, critic, amp_dtype)

    pin = device.type == "cuda"
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=opts.seed)
    if len(sampler) < 2:
        raise ValueError(
            f"each of {world} processes needs >= 2 training images per batch; "
            f"{len(train_ds)} training images are too few"
        )
    bs = min(opts.batch_size, len(sampler))
    loader = DataLoader(
        train_ds,
        batch_size=bs,
        sampler=sampler,
        num_workers=opts.workers,
        drop_last=True,
        pin_memory=pin,
        persistent_workers=opts.workers > 0,
    )
    # E-step / validation shards without DistributedSampler's padding: exact sums
    shard = Subset(train_ds, list(range(rank, len(train_ds), world)))
    e_loader = DataLoader(shard, batch_size=opts.batch_size, num_workers=opts.workers, pin_memory=pin)
    val_shard = Subset(val_ds, list(range(rank, len(val_ds), world)))
    v_loader = DataLoader(val_shard, batch_size=opts.batch_size, num_workers=opts.workers)

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_run(out, {**run, "models": {cfg.kind: {"config": cfg.to_dict(), "options": asdict(opts)}}})
    last_saved: int | None = start_epoch if resumed else None
    if not resumed:
        full = DataLoader(
            train_ds, batch_size=min(opts.batch_size, len(train_ds)), num_workers=opts.workers, drop_last=True
        )
        calibrate_batchnorm(model, full, device, cl)
    if not resumed and opts.epochs == 0:
        # epochs=0: initialise (+ E-step) and save, e.g. to inspect mu/sigma
        estimate_descriptor(model, e_loader, device, cl)
        if rank == 0:
            save_checkpoint(ckpt_path, model, opt_ae, opt_critic, 0, 0, [], {**run, "options": asdict(opts)})

    for epoch in range(start_epoch, opts.epochs):
        if epoch % cfg.estep_every == 0:
            estimate_descriptor(model, e_loader, device, cl)
        model.train()
        sampler.set_epoch(epoch)
        gen = _epoch_generator(opts.seed, epoch, rank)
        sums = torch.zeros(len(LOSS_TERMS), dtype=torch.float64)
        n_steps, n_images, t0 = 0, 0, time.perf_counter()
        bar = _progress(loader, opts.progress and rank == 0, f"{cfg.kind} epoch {epoch + 1}/{opts.epochs}")
        for i, batch in enumerate(bar):
            if opts.max_steps_per_epoch is not None and i >= opts.max_steps_per_epoch:
                break
            images = batch["image"].to(device, non_blocking=True)
            x = model_inputs(images, cfg, gen, opts.patches_per_image)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            terms = _all_sum(step(x, gen)) / world
            vals = terms.tolist()
            global_step += 1
            if not all(math.isfinite(v) for v in vals):
                last = "none written yet" if last_saved is None else f"{ckpt_path} (epoch {last_saved})"
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, step {i + 1} (global step {global_step}): "
                    f"{_fmt_terms(vals)}; training stopped, last good checkpoint: {last}"
                )
            sums += terms.double()
            n_steps += 1
            n_images += images.shape[0] * world
            if hasattr(bar, "set_postfix"):
                ips = n_images / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix({k: f"{v:.4f}" for k, v in zip(LOSS_TERMS, vals)} | {"img/s": f"{ips:.1f}"})
        secs = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "steps": n_steps,
            "images": n_images,
            "seconds": round(secs, 4),
            "images_per_s": n_images / max(secs, 1e-9),
        }
        row |= {k: float(v) / max(n_steps, 1) for k, v in zip(LOSS_TERMS, sums)}
        row |= validation_loss(model, v_loader, device, opts.backend)
        row |= {"mu_norm": float(model.descriptor.mu.norm()), "sigma2": float(model.descriptor.sigma2)}
        history.append(row)
        if rank == 0:
            save_checkpoint(
                ckpt_path,
                model,
                opt_ae,
                opt_critic,
                epoch + 1,
                global_step,
                history,
                {**run, "options": asdict(opts)},
                rng_state(),
            )
            _write_logs(out, cfg.kind, history)
        last_saved = epoch + 1
        _barrier()

    _barrier()
    model.eval()
    return TrainResult(ckpt_path, model, history)


class _ImageBatches:
    """Re-iterable view of a loader as model inputs (for KD pre-training)."""

    def __init__(self, loader: DataLoader, cfg: ModelConfig, device: torch.device) -> None:
        self.loader, self.cfg, self.device = loader, cfg, device

    def __iter__(self):
        for b in self.loader:
            yield model_inputs(b["image"].to(self.device), self.cfg)


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


TRAIN_OPTION_NAMES = tuple(f.name for f in fields(TrainOptions))
