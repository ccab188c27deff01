"""Network precision for scoring: fp32, bf16, or auto (bf16 where the hardware has it
and the guard of :mod:`igd_fast.score.guard` passes).

Only the networks (encoder, decoder) run in bf16; their outputs are cast back to
float32 before the loss kernels, the descriptor and the maps, which stay fp32 (SPEC
section 2). bf16 runs under ``torch.autocast`` with the fp32 (folded) weights: the
convolutions become oneDNN bf16 convolutions with fp32 accumulation. Weights converted to
bf16 ran at the same speed (docs/benchmarks.md), so autocast it is: one set of
weights, and the same wrapper on a GPU.

``auto`` needs the fp32 calibration (thresholds) to check decisions against, so here it
only prepares the bf16 candidate; the Scorer decides when it calibrates.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .recipe import PRECISIONS

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags with native bf16 arithmetic


class PrecisionError(ValueError):
    """A precision this device cannot run."""


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bf16 flags (``avx512_bf16``, ``amx_bf16``) this CPU reports; [] when none or unreadable."""
    try:
        words = set(Path(cpuinfo).read_text().split())
    except OSError:
        return []
    return [f for f in _CPU_BF16_FLAGS if f in words]


def bf16_support(device: torch.device) -> str | None:
    """None when ``device`` has native bf16, else why not (a sentence for the user)."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{device} has no bf16 support"
    if device.type == "cpu":
        if not cpu_bf16_flags():
            return "this CPU has no bf16 instructions (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo)"
        return None
    return f"bf16 scoring is not supported on {device.type}"


def bf16_where_native(requested: bool | None, device: torch.device) -> tuple[bool, str | None]:
    """(bf16 autocast on?, why not where the device lacks it): ``requested`` True or False as
    given, None where ``device`` computes bf16 natively (elsewhere autocast converts in software
    and is slower than fp32). The training default of the defect model and of a preset's ``amp``."""
    if requested is not None:
        return bool(requested), None
    why = bf16_support(device)
    return why is None, why


class Autocast(nn.Module):
    """``inner`` run under bf16 autocast, its output cast back to float32."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.inner(x)
        return out.float()


def bf16_networks(model: nn.Module) -> nn.Module:
    """A copy of an IGD model whose encoder and decoder run in bf16 (:class:`Autocast`);
    the descriptor and everything after the networks stay fp32."""
    out = copy.copy(model)  # shares the descriptor and config; the copy gets its own submodules
    out._modules = dict(model._modules)
    # IGD's encoder / decoder; the defect model's reconstruction and segmentation networks
    for name in ("encoder", "decoder", "recon", "seg"):
        if getattr(model, name, None) is not None:
            setattr(out, name, Autocast(getattr(model, name)))
    return out


def choose_precision(components: Mapping[str, nn.Module], requested: str,
                     device: torch.device) -> tuple[dict, dict, dict | None]:  # fmt: skip
    """(the components to score with now, the record of the decision, the bf16 candidate
    that ``auto`` still has to guard or None). ``components`` are scoring components
    (``c.with_networks(wrap)``)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    rec: dict = {"requested": requested, "models": dict.fromkeys(components, "fp32")}
    if requested == "fp32":
        return dict(components), rec, None
    why = bf16_support(device)
    if why is not None:
        if requested == "bf16":
            raise PrecisionError(f"bf16 scoring needs native bf16: {why}")
        rec["reason"] = why
        return dict(components), rec, None
    bf16 = {k: c.with_networks(bf16_networks) for k, c in components.items()}
    if requested == "auto":
        rec["reason"] = "not decided yet: the guard runs with the calibration"
        return dict(components), rec, bf16
    rec["models"] = dict.fromkeys(components, "bf16")
    return bf16, rec, None
