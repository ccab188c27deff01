"""Encoder initialisation from a local torchvision ResNet-18 ``state_dict`` file and
the paper's ImageNet knowledge-distillation (KD) pre-training. Nothing is downloaded.

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

from .nets import Encoder, ResNetTrunk, trunk_state_dict


def read_resnet18_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The trunk entries of a torchvision ResNet-18 state_dict file (``torch.save``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ResNet-18 weights file {p} does not exist")
    sd = torch.load(p, map_location="cpu", weights_only=True)
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
