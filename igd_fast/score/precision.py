"""Network precision for scoring: fp32, bf16, or auto (bf16 where the hardware has it
and a guard on the validation normals passes).

Only the networks (encoder, decoder) run in bf16; their outputs are cast back to
float32 before the loss kernels, the descriptor and the maps, which stay fp32 (SPEC
section 2). bf16 runs under ``torch.autocast`` with the fp32 (folded) weights: the
convolutions become oneDNN bf16 convolutions with fp32 accumulation. Weights converted to
bf16 ran at the same speed (docs/benchmarks.md), so autocast it is: one set of
weights, and the same wrapper on a GPU.

The guard (``auto``) scores the validation normals with both precisions and keeps bf16
for a model only when, for that model's image terms and maps at its own resolution (with
``map_term="maha"`` the residual it measures: the statistics are not fitted yet),
  Spearman(fp32 terms, bf16 terms) >= min_spearman  and
  max |map_bf16 - map_fp32| / (max map_fp32 - min map_fp32) <= max_map_diff.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .recipe import PRECISIONS

# guard defaults (Scorer(guard=PrecisionGuard(...)) overrides them, e.g. in tests)
MIN_SPEARMAN = 0.999  # rank agreement of the validation-normal image terms
MAX_MAP_DIFF = 0.01  # largest map difference as a fraction of the fp32 map's range
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags with native bf16 arithmetic


class PrecisionError(ValueError):
    """A precision this device cannot run."""


@dataclass(frozen=True)
class PrecisionGuard:
    """The tolerances ``auto`` checks bf16 against fp32 with (module doc)."""

    min_spearman: float = MIN_SPEARMAN
    max_map_diff: float = MAX_MAP_DIFF


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


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); 1.0 when both are constant
    (identical rankings), 0.0 when only one is."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, np.float64)), rankdata(np.asarray(b, np.float64))
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb else 0.0
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def map_difference(ref: Tensor, other: Tensor) -> float:
    """max |other - ref| relative to the range of ``ref`` (0 when both are constant and equal)."""
    diff = float((other.double() - ref.double()).abs().max())
    span = float(ref.max() - ref.min())
    if span == 0:
        return 0.0 if diff == 0 else float("inf")
    return diff / span


def guard_values(terms32, terms16, maps32: Tensor | None, maps16: Tensor | None, guard: PrecisionGuard) -> dict:
    """The guard's measurements for one model and whether bf16 passes them."""
    rho = spearman(terms32, terms16)
    diff = map_difference(maps32, maps16) if maps32 is not None else 0.0
    ok = bool(rho >= guard.min_spearman and diff <= guard.max_map_diff)
    return {"spearman": rho, "max_map_diff": diff, "n_images": len(terms32), "passed": ok}


def guard_record(guard: PrecisionGuard) -> dict:
    return {"min_spearman": guard.min_spearman, "max_map_diff": guard.max_map_diff,
            "rule": "per model on the validation normals: Spearman of image terms >= min_spearman and "
                    "max |map difference| / fp32 map range <= max_map_diff"}  # fmt: skip


def choose_precision(components: Mapping[str, nn.Module], requested: str, device: torch.device,
                     guard: PrecisionGuard, images: Iterable[Tensor]) -> tuple[dict, dict]:  # fmt: skip
    """(the components to score with, the record of the decision). ``components`` are
    scoring components (``c(x, want_map) -> (term, map)``, ``c.with_networks(wrap)``);
    ``images``: batches of validation normals, read only for ``auto``."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    rec: dict = {"requested": requested, "models": dict.fromkeys(components, "fp32")}
    if requested == "fp32":
        return dict(components), rec
    why = bf16_support(device)
    if why is not None:
        if requested == "bf16":
            raise PrecisionError(f"bf16 scoring needs native bf16: {why}")
        rec["reason"] = why
        return dict(components), rec
    bf16 = {k: c.with_networks(bf16_networks) for k, c in components.items()}
    if requested == "auto":
        rec["guard"] = guard_record(guard)
        rec["guard_values"] = values = guard_components(components, bf16, guard, images)
        bf16 = {k: c for k, c in bf16.items() if values[k]["passed"]}
        rec["reason"] = "guard passed" if len(bf16) == len(components) else "guard failed for " + ", ".join(
            k for k in components if k not in bf16)  # fmt: skip
    rec["models"].update(dict.fromkeys(bf16, "bf16"))
    return {**components, **bf16}, rec


@torch.inference_mode()
def guard_components(fp32: Mapping[str, nn.Module], bf16: Mapping[str, nn.Module], guard: PrecisionGuard,
                     images: Iterable[Tensor]) -> dict:  # fmt: skip
    """Each component's image terms and maps on ``images`` in fp32 and bf16, compared by
    :func:`guard_values`."""
    acc = {k: {"fp32": ([], []), "bf16": ([], [])} for k in bf16}
    for x in images:
        for kind in bf16:
            for name, c in (("fp32", fp32[kind]), ("bf16", bf16[kind])):
                s, m = c(x, True)
                acc[kind][name][0].append(s.double().cpu())
                if m is not None:
                    acc[kind][name][1].append(m.float().cpu())
    out = {}
    for kind, a in acc.items():
        (t32, m32), (t16, m16) = a["fp32"], a["bf16"]
        if not t32:
            raise ValueError("none of the validation images could be read for the precision guard")
        maps = (torch.cat(m32), torch.cat(m16)) if m32 else (None, None)
        out[kind] = guard_values(torch.cat(t32).numpy(), torch.cat(t16).numpy(), *maps, guard)
    return out
