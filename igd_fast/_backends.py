"""The one place that decides which backend runs an op.

Backends: ``torch`` (pure-PyTorch reference, always there), ``cpu`` (C++ extension),
``cuda`` (CUDA extension), ``triton`` (Triton kernels, CUDA tensors or
``TRITON_INTERPRET=1`` on the CPU). Choice order: the call's ``backend=`` argument,
then the ``IGD_FAST_BACKEND`` environment variable, then by the tensor's device.
"""

from __future__ import annotations

import importlib
import os
from functools import cache

import torch

NAMES = ("torch", "cpu", "cuda", "triton")


@cache
def extension() -> object | None:
    """The compiled extension module, or None when this install has none."""
    try:
        return importlib.import_module("igd_fast._C")
    except ImportError:
        return None


def extension_has_cuda() -> bool:
    ext = extension()
    return bool(ext is not None and getattr(ext, "has_cuda", lambda: False)())


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return triton_interpret() or torch.cuda.is_available()


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backends() -> dict[str, bool]:
    """Which backends this build and machine can run."""
    return {
        "torch": True,
        "cpu": extension() is not None,
        "cuda": extension_has_cuda() and torch.cuda.is_available(),
        "triton": triton_available(),
    }


def _device_ok(name: str, device: torch.device) -> bool:
    if name == "torch":
        return True
    if name == "cpu":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    if name == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpret())
    return False


@torch.compiler.assume_constant_result  # a pure function of its arguments: no graph break
def resolve(device: torch.device, backend: str | None = None) -> str:
    """Pick the backend for tensors on ``device``; explicit choices are checked, never ignored."""
    requested = backend or os.environ.get("IGD_FAST_BACKEND") or None
    if requested is not None and requested != "auto":
        if requested not in NAMES:
            raise ValueError(f"unknown backend {requested!r}; choose one of {NAMES} or 'auto'")
        if not backends()[requested]:
            raise ValueError(f"backend {requested!r} is not available in this build: {backends()}")
        if not _device_ok(requested, device):
            raise ValueError(f"backend {requested!r} cannot run tensors on device {device}")
        return requested
    avail = backends()
    if device.type == "cuda":
        for name in ("cuda", "triton"):
            if avail[name]:
                return name
        return "torch"
    if device.type == "cpu" and avail["cpu"]:
        return "cpu"
    return "torch"
