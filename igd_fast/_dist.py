"""Process plumbing shared by train and score: the torchrun environment, collectives
that are no-ops in a single process, the one device default and the machine-fit
defaults (DataLoader workers, threads).

Under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised on first use:
nccl for CUDA work, gloo otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world: int
    local_rank: int

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(backend: str = "gloo") -> ProcessInfo:
    """(rank, world, local rank) of this process; joins the torchrun process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    if dist.is_initialized():
        return ProcessInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return ProcessInfo(0, 1, 0)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def all_sum(t: Tensor) -> Tensor:
    """In-place sum over processes (returns ``t``)."""
    if _active():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if _active():
        dist.barrier()


def gather_objects(obj) -> list | None:
    """Every process's ``obj`` on rank 0 in rank order; None on the others."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DeviceError(ValueError):
    """A --device that this machine cannot run; the message says why and what to use."""


def resolve_device(spec: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The device to run on. ``None``: ``cuda:<local rank>`` when a GPU is visible, else
    the CPU. An explicit spec is checked here, so a typo or a missing GPU is one clear
    error instead of a failure deep inside the first kernel."""
    if spec is None:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"invalid device {str(spec)!r}: use cpu, cuda or cuda:N") from e
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {str(spec)!r} is not supported: use cpu, cuda or cuda:N")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise DeviceError(f"device {str(spec)!r}: the CPU is one device (all its cores), it has no index; use cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"device {str(spec)!r} requested but {why}; use --device cpu")
        n = torch.cuda.device_count()
        idx = local_rank % n if dev.index is None else dev.index
        if idx >= n:
            raise DeviceError(f"device {str(spec)!r}: only {n} CUDA device(s) are visible (cuda:0..cuda:{n - 1})")
        dev = torch.device("cuda", idx)
    return dev


def available_cores() -> int:
    """Cores this process may run on (affinity / cgroup-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """DataLoader workers that leave the cores to the compute threads.

    Decoding a PNG is cheap next to the networks, but every worker competes with the
    main process's OpenMP threads for the same cores: one worker per two cores above
    the first two, at most 4 (2 cores: 1 worker, 4: 2, 8+: 4).
    """
    return max(1, min(4, available_cores() // 2))


def default_score_workers() -> int:
    """DataLoader workers for scoring (score, eval): none on 2 cores or fewer, else
    :func:`default_workers`.

    On the 2-core EPYC VM a worker cost more compute than the reading it hid: 96 PNGs of
    256², 2 torch threads, paper width 5.8 images/s with 0 workers against 5.1 with 1
    (decode + resize is 1 % of the wall time there), the ``--preset cpu`` model 152 against
    136 (reading 19-29 % of the wall time, but the forked worker slowed the networks by
    14-39 %; benchmarks/loader_overlap.py, README). Training was not measured: it keeps
    :func:`default_workers`.
    """
    return 0 if available_cores() <= 2 else default_workers()
