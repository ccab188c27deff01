"""The one checkpoint format: a dict of tensors and plain Python values, written
atomically (temp file in the same folder + ``os.replace``) and read back with
``torch.load(weights_only=True)``.

Keys: ``format``, ``config`` (ModelConfig.to_dict), ``model`` (state_dict, includes the
descriptor's mu/sigma2 buffers), ``mu``, ``sigma2``, ``opt_ae``, ``opt_critic``,
``epoch`` (epochs completed), ``global_step``, ``rng`` (torch/numpy/python/cuda states),
``history`` (per-epoch log rows), ``run`` (data root, category, seed, options).
A model directory holds ``global.pt``, ``local.pt`` and/or ``defect.pt`` and ``run.json``.
``defect.pt`` (:mod:`igd_fast.models.defect`) has the same ``format``, ``config``, ``model``,
``history`` and ``run`` keys, its config's kind "defect", and ``normaliser`` (the statistics
its scoring part standardises with, fitted on the validation normals after training).

This module sits below both ``train`` (which writes checkpoints) and ``score`` (which
reads them), so neither imports the other.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.files import NotARegularFile, regular_file
from .limits import LimitError, check_pixels
from .models import IGD, ModelConfig
from .models.weights import load_weights
from .outputs import atomic_write_bytes  # noqa: F401 - re-exported: the one atomic writer

FORMAT = "igd_fast.checkpoint/1"
RUN_JSON = "run.json"
MODEL_FILES = ("global.pt", "local.pt", "defect.pt")


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
    file for anything unusable: truncated, random bytes, another format, pickled code,
    not a regular file, weights or descriptor that are not finite numbers.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        regular_file(p, "checkpoint")
    except (NotARegularFile, FileNotFoundError) as e:
        raise CheckpointError(str(e)) from None
    ckpt = torch_load(p, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an igd_fast checkpoint (format {FORMAT})")
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{p} is an incomplete igd_fast checkpoint: no {key!r} entry")
    check_weights(ckpt, p)
    return ckpt


def torch_load(p: Path, what: str, map_location: str | torch.device | None = "cpu"):
    """``torch.load(weights_only=True)`` of ``p``, every failure a CheckpointError naming
    the file (``what``: how to call it), a pickled payload said to be one."""
    return load_weights(p, what, CheckpointError, map_location)


def check_weights(ckpt: dict, path: str | Path) -> None:
    """CheckpointError unless the stored weights are a dict of tensors and every
    floating-point one (descriptor included) is finite: NaN weights score every image NaN."""
    sd = ckpt.get("model")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path} does not hold a usable model: its 'model' entry is not a state_dict")
    named = [*sd.items(), *((k, ckpt[k]) for k in ("mu", "sigma2") if isinstance(ckpt.get(k), torch.Tensor))]
    bad = [k for k, v in named if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{path} holds non-finite (NaN or inf) weights in {', '.join(bad[:3])}{more}: "
                              "the model is broken (e.g. training diverged); retrain it")  # fmt: skip


def _config(ckpt: dict, path: str | Path) -> ModelConfig:
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path} does not hold a usable model config: {e}") from e
    try:
        check_pixels(cfg.image_size, cfg.image_size, f"the model input size in {path}")
    except LimitError as e:
        raise CheckpointError(str(e)) from None
    return cfg


def _shape_mismatches(cfg, sd: dict, build=IGD) -> list[str]:
    """Where the weights do not fit ``build(cfg)``'s network, found on the meta device (no
    memory is allocated for the network, whatever sizes the config claims)."""
    with torch.device("meta"):
        want = build(cfg).state_dict()
    bad = [f"missing {k}" for k in want if k not in sd]
    bad += [f"unexpected {k}" for k in sd if k not in want]
    bad += [f"{k}: {tuple(sd[k].shape)} stored, {tuple(v.shape)} for the config" for k, v in want.items()
            if k in sd and tuple(sd[k].shape) != tuple(v.shape)]  # fmt: skip
    return bad


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> IGD:
    """The model of a loaded checkpoint; its config is checked against the weights'
    shapes before the network is built (a config claiming a huge network is refused
    without allocating it)."""
    cfg = _config(ckpt, path)
    try:
        bad = _shape_mismatches(cfg, ckpt["model"])
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path} does not hold a usable model: {e}") from e
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"{path} does not hold a usable model: its weights do not fit its config: "
                              + "; ".join(bad[:3]) + more)  # fmt: skip
    try:
        model = IGD(cfg)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path} does not hold a usable model: {e}") from e
    return model


def load_model(path: str | Path, map_location: str | torch.device | None = "cpu") -> IGD:
    """The IGD model stored in a checkpoint, in eval mode, on ``map_location``."""
    ckpt = load_checkpoint(path, "cpu")
    model = model_from_checkpoint(ckpt, path)
    if map_location is not None:
        model = model.to(map_location)
    return model.eval()


def save_defect_checkpoint(path: str | Path, model, normaliser: dict, history: list[dict], run: dict) -> None:
    """Write a trained defect model (:mod:`igd_fast.models.defect`) atomically to ``path``."""
    ckpt = {"format": FORMAT, "config": model.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "normaliser": dict(normaliser), "history": list(history), "run": dict(run)}  # fmt: skip
    atomic_write_bytes(path, lambda f: torch.save(ckpt, f))


def load_defect_model(path: str | Path, map_location: str | torch.device | None = "cpu"):
    """(the defect model in eval mode, its normaliser dict); CheckpointError naming the file
    for anything unusable (the config checked against the weights before building)."""
    from .models.defect import NORMALISER_KEYS, DefectConfig, DefectModel

    ckpt = load_checkpoint(path, "cpu")
    try:
        cfg = DefectConfig.from_dict(ckpt["config"])
        check_pixels(cfg.image_size, cfg.image_size, f"the model input size in {path}")
        bad = _shape_mismatches(cfg, ckpt["model"], DefectModel)
        norm = {k: float(ckpt["normaliser"][k]) for k in NORMALISER_KEYS}
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, LimitError) as e:
        raise CheckpointError(f"{path} does not hold a usable defect model: {e}") from e
    if bad or not all(np.isfinite(v) for v in norm.values()) or norm["logit_std"] <= 0 or norm["resid_std"] <= 0:
        why = "; ".join(bad[:3]) if bad else f"its normaliser is not usable ({norm})"
        raise CheckpointError(f"{path} does not hold a usable defect model: {why}")
    model = DefectModel(cfg)
    model.load_state_dict(ckpt["model"])
    if map_location is not None:
        model = model.to(map_location)
    return model.eval(), norm


def model_files(model_dir: str | Path) -> dict[str, Path]:
    """``{"global": .../global.pt, ...}`` for the model files present; a clear error when
    the directory holds none."""
    d = Path(model_dir)
    if d.is_file() and d.name in MODEL_FILES:
        raise FileNotFoundError(f"{d} is a model file, not a model directory: pass its folder, --model {d.parent}")
    if d.exists() and not d.is_dir():
        raise FileNotFoundError(f"{d} is not a model directory (a folder holding global.pt, local.pt or defect.pt)")
    if not d.is_dir():
        raise FileNotFoundError(f"model directory {d} does not exist")
    found = {name.removesuffix(".pt"): d / name for name in MODEL_FILES if (d / name).is_file()}
    if not found:
        raise FileNotFoundError(
            f"{d} holds none of global.pt, local.pt, defect.pt: not a trained model directory "
            f"(train one with: igd-fast train --data ROOT --category C --out {d})"
        )
    return found


def read_run(model_dir: str | Path) -> dict:
    """The ``run.json`` of a model directory (data root, category, seed, the
    validation files carved from train/good, per-model configs)."""
    p = Path(model_dir) / RUN_JSON
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist: not a trained model directory")
    return _run_record(p)


def _run_record(p: Path) -> dict:
    try:
        regular_file(p, "run record")
        run = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {p}: {e}") from e
    if not isinstance(run, dict):
        raise CheckpointError(f"{p} is not a run record (a JSON object was expected, it holds a "
                              f"{type(run).__name__})")  # fmt: skip
    return run


def validation_files(model_dir: str | Path) -> list[Path]:
    """Absolute paths of the validation normals recorded in ``run.json``."""
    run = read_run(model_dir)
    try:
        base = Path(run["data_root"]) / run["category"]
        files = run["val_files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError("val_files is not a list of file names")
        return [base / f for f in files]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{Path(model_dir) / RUN_JSON} lacks the validation split ({e})") from e


def write_run(model_dir: str | Path, run: dict, merge: bool = True) -> None:
    """Write ``run.json`` atomically, merging the ``models`` entries of an existing one
    (``merge`` False: replace it). An existing file that is not a run record is a
    CheckpointError naming it (never silently replaced)."""
    p = Path(model_dir) / RUN_JSON
    if merge and p.exists():
        old = _run_record(p)
        models = old.get("models", {}) if isinstance(old.get("models"), dict) else {}
        run = {**old, **run, "models": {**models, **run.get("models", {})}}
    data = json.dumps(run, indent=2, sort_keys=True).encode()
    atomic_write_bytes(p, lambda f: f.write(data))
