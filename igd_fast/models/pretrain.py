"""Encoder initialisation from a file (a self-supervised encoder written by
``igd-fast pretrain``, or a local torchvision ResNet-18 ``state_dict``: the format is
detected, :func:`init_encoder`) and the paper's ImageNet knowledge-distillation (KD)
pre-training. Nothing is downloaded.

KD (paper, section "Implementation"): minimise the l2 distance between the encoder's
pooled 8·width-d trunk feature and the teacher's 512-d pooled layer4 feature. The
teacher is our own :class:`ResNetTrunk` (width 64) loaded from the file. A student of
another width gets a linear adaptor (trained with it, then dropped).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .nets import Encoder, ResNetTrunk, trunk_state_dict
from .ssl import SSL_FORMAT, arch_mismatches, encoder_arch
from .weights import load_weights


def read_resnet18_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The trunk entries of a torchvision ResNet-18 state_dict file (``torch.save``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"ResNet-18 weights file {p} does not exist")
    sd = load_weights(p, "ResNet-18 weights file")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{p} does not hold a state_dict (got {type(sd).__name__})")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    trunk = trunk_state_dict(sd)
    if not trunk:
        raise ValueError(f"{p} has no conv1/bn1/layer1..layer4 entries: not a torchvision ResNet state_dict")
    return trunk


def load_trunk(module: ResNetTrunk, path: str | Path) -> None:
    """Copy the torchvision ResNet-18 trunk weights in ``path`` into ``module``."""
    sd = read_resnet18_state_dict(path)
    own = trunk_state_dict(module.state_dict())
    missing = sorted(set(own) - set(sd))
    bad = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or bad:
        raise ValueError(
            f"{path} does not fit this encoder (needs width=64, blocks=(2, 2, 2, 2)): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"shape mismatch {bad[:5]}"
        )
    module.load_state_dict({k: sd[k] for k in own}, strict=False)


def _read(path: str | Path):
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--init-encoder file {p} does not exist")
    return load_weights(p, "--init-encoder file")


def _ssl_entry(obj: dict, path: str | Path, cfg: ModelConfig) -> dict:
    """The file's encoder for ``cfg``'s kind, after checking its architecture fits."""
    encoders = obj.get("encoders") or {}
    entry = encoders.get(cfg.kind)
    if entry is None:
        held = ", ".join(sorted(encoders)) or "no"
        raise ValueError(
            f"--init-encoder {path} holds a pretrained {held} encoder, not one for the {cfg.kind} model (model kind "
            f"mismatch): pretrain with --model {cfg.kind} (or both), or train --model {held}"
        )
    bad = arch_mismatches(entry["arch"], cfg)
    if bad:
        raise ValueError(f"--init-encoder {path} does not fit the {cfg.kind} model's encoder: " + "; ".join(bad)
                         + " (pretrain with the same --width/--blocks/--latent as train)")  # fmt: skip
    return entry


def init_encoder(encoder: Encoder, path: str | Path, cfg: ModelConfig) -> dict:
    """Initialise ``encoder`` (of ``cfg``'s model) from ``path``: an ``igd-fast
    pretrain`` file (the whole encoder, trunk and projection to Z; the architecture must
    match) or a torchvision ResNet-18 state_dict (the trunk only). ValueError naming
    the mismatch otherwise. Returns what was loaded, for the run record."""
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == SSL_FORMAT:
        entry = _ssl_entry(obj, path, cfg)
        encoder.load_state_dict(entry["state_dict"])
        info = {"path": str(path), "format": SSL_FORMAT, "kind": cfg.kind, "epochs_done": entry["epochs_done"],
                "epochs": entry["epochs"], "final_loss": entry["history"][-1]["loss"] if entry["history"] else None,
                "input_size": entry["arch"]["input_size"], "pretrain": obj.get("pretrain", {})}  # fmt: skip
        if entry["arch"]["input_size"] != encoder_arch(cfg)["input_size"]:
            info["note"] = f"pretrained on {entry['arch']['input_size']}² inputs, this model sees {cfg.input_size}²"
        return info
    load_trunk(encoder, path)
    return {"path": str(path), "format": "torchvision-resnet18", "kind": cfg.kind}


def teacher_from_file(path: str | Path) -> ResNetTrunk:
    """A frozen ResNet-18 trunk (eval mode) with the weights in ``path``."""
    t = ResNetTrunk(64, (2, 2, 2, 2))
    load_trunk(t, path)
    t.eval().requires_grad_(False)
    return t


def distill_encoder(
    encoder: Encoder,
    teacher_path: str | Path,
    batches: Iterable[Tensor],
    steps: int,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    device: torch.device | str = "cpu",
) -> list[float]:
    """KD pre-training of ``encoder``'s trunk for ``steps`` steps over ``batches``
    (cycled; N×3×S×S normalised images). Adam as in the paper. Returns the losses."""
    dev = torch.device(device)
    teacher = teacher_from_file(teacher_path).to(dev)
    adapt: nn.Module = nn.Identity()
    if encoder.out_features != teacher.out_features:
        adapt = nn.Linear(encoder.out_features, teacher.out_features).to(dev)
    params = list(encoder.parameters()) + list(adapt.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    encoder.train()
    losses: list[float] = []
    while len(losses) < steps:
        n_before = len(losses)
        for x in batches:
            if len(losses) >= steps:
                break
            x = x.to(dev)
            with torch.no_grad():
                target = teacher(x)
            loss = (adapt(ResNetTrunk.forward(encoder, x)) - target).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        if len(losses) == n_before:
            raise ValueError("distill_encoder: no batches to train on")
    return losses
