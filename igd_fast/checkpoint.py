"""The one checkpoint format: a dict of tensors and plain Python values, written
atomically (temp file in the same folder + ``os.replace``) and read back with
``torch.load(weights_only=True)``.

Keys: ``format``, ``config`` (ModelConfig.to_dict), ``model`` (state_dict, includes the
descriptor's mu/sigma2 buffers), ``mu``, ``sigma2``, ``opt_ae``, ``opt_critic``,
``epoch`` (epochs completed), ``global_step``, ``rng`` (torch/numpy/python/cuda states),
``history`` (per-epoch log rows), ``run`` (data root, category, seed, options).
A model directory holds ``global.pt`` and/or ``local.pt`` and ``run.json``.

This module sits below both ``train`` (which writes checkpoints) and ``score`` (which
reads them), so neither imports the other.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .models import IGD, ModelConfig

FORMAT = "igd_fast.checkpoint/1"
RUN_JSON = "run.json"
MODEL_FILES = ("global.pt", "local.pt")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (corrupt, truncated, not ours); names the file."""


def rng_state() -> dict[str, Any]:
    """torch, numpy, python (and CUDA) RNG states in weights_only-loadable types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = st["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path``, fsync, then rename
    over ``path``: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(
    path: str | Path,
    model: IGD,
    opt_ae: torch.optim.Optimizer | None = None,
    opt_critic: torch.optim.Optimizer | None = None,
    epoch: int = 0,
    global_step: int = 0,
    history: list[dict] | None = None,
    run: dict | None = None,
    rng: dict | None = None,
) -> None:
    """Write a checkpoint of ``model`` (and training state) atomically to ``path``."""
    ckpt = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "mu": model.descriptor.mu.detach().cpu().clone(),
        "sigma2": model.descriptor.sigma2.detach().cpu().clone(),
        "opt_ae": opt_ae.state_dict() if opt_ae is not None else None,
        "opt_critic": opt_critic.state_dict() if opt_critic is not None else None,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "rng": rng if rng is not None else rng_state(),
        "history": list(history or []),
        "run": dict(run or {}),
    }
    atomic_write_bytes(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict:
    """The checkpoint dict, loaded with ``weights_only=True`` (no pickled code runs).

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` naming the
    file for anything unreadable: truncated, random bytes, another format, pickled code.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    # random bytes can make the unpickler raise almost anything (IndexError, KeyError,
    # struct.error, ...): every failure of the load is a file we cannot read
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        why = next((ln.strip() for ln in msg.splitlines() if "Unsupported global" in ln), None)
        if why is not None:
            raise CheckpointError(
                f"refusing checkpoint {p}: it holds pickled Python objects, which a weights_only load never runs "
                f"({why})"
            ) from e
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and "Weights only load failed" not in ln]
        first = lines[-1][:200] if lines else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {p}: corrupt, truncated or not a checkpoint ({first})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an igd_fast checkpoint (format {FORMAT})")
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{p} is an incomplete igd_fast checkpoint: no {key!r} entry")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> IGD:
    try:
        model = IGD(ModelConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path} does not hold a usable model: {e}") from e
    return model


def load_model(path: str | Path, map_location: str | torch.device | None = "cpu") -> IGD:
    """The IGD model stored in a checkpoint, in eval mode, on ``map_location``."""
    ckpt = load_checkpoint(path, map_location)
    model = model_from_checkpoint(ckpt, path)
    if map_location is not None:
        model = model.to(map_location)
    return model.eval()


def model_files(model_dir: str | Path) -> dict[str, Path]:
    """``{"global": .../global.pt, "local": .../local.pt}`` for the files present; a clear
    error when the directory holds neither."""
    d = Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"model directory {d} does not exist")
    found = {name.removesuffix(".pt"): d / name for name in MODEL_FILES if (d / name).is_file()}
    if not found:
        raise FileNotFoundError(
            f"{d} holds neither global.pt nor local.pt: not a trained model directory "
            f"(train one with: igd-fast train --data ROOT --category C --out {d})"
        )
    return found


def read_run(model_dir: str | Path) -> dict:
    """The ``run.json`` of a model directory (data root, category, seed, the
    validation files carved from train/good, per-model configs)."""
    p = Path(model_dir) / RUN_JSON
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: not a trained model directory")
    try:
        run = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {p}: {e}") from e
    if not isinstance(run, dict):
        raise CheckpointError(f"{p} is not a run record (a JSON object was expected)")
    return run


def validation_files(model_dir: str | Path) -> list[Path]:
    """Absolute paths of the validation normals recorded in ``run.json``."""
    run = read_run(model_dir)
    try:
        base = Path(run["data_root"]) / run["category"]
        return [base / f for f in run["val_files"]]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{Path(model_dir) / RUN_JSON} lacks the validation split ({e})") from e


def write_run(model_dir: str | Path, run: dict) -> None:
    """Write ``run.json`` atomically, merging the ``models`` entries of an existing one."""
    p = Path(model_dir) / RUN_JSON
    if p.is_file():
        old = json.loads(p.read_text())
        models = {**old.get("models", {}), **run.get("models", {})}
        run = {**old, **run, "models": models}
    data = json.dumps(run, indent=2, sort_keys=True).encode()
    atomic_write_bytes(p, lambda f: f.write(data))
