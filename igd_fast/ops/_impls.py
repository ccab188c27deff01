"""Backend name -> module holding the kernel entry points for that backend.

Each module provides the functions named in ARCHITECTURE.md (``ssim_scale_fwd``,
``ssim_scale_bwd``, ``combine_maps``, ...). Modules import lazily so a missing
Triton or extension never breaks ``import igd_fast``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {
    "torch": "igd_fast.reference",
    "cpu": "igd_fast.ops._ext",
    "cuda": "igd_fast.ops._ext",
    "triton": "igd_fast.kernels",
}


def impl(backend: str, family: str) -> ModuleType:
    """The module of ``backend`` for the op ``family`` (``ssim``, ``patches``)."""
    return importlib.import_module(f"{_MODULES[backend]}.{family}")
