"""The limits the package enforces on inputs that would otherwise take unbounded memory,
each documented, raised by an environment variable, and named with that variable in
the error it gives.

=========================  ===========================  ========================================
limit                      default                      raise with
=========================  ===========================  ========================================
pixels per image           40,000,000 (e.g. 6324²)      ``IGD_FAST_MAX_PIXELS``
smoothing sigma            256 pixels (``--map-sigma``,  ``IGD_FAST_MAX_SIGMA``
                           ``--residual-sigma``)
export parity-check batch  64 images (``--check-batch``) ``IGD_FAST_MAX_CHECK_BATCH``
=========================  ===========================  ========================================

Pixels: scoring one image holds its decoded pixels, its map at full resolution, the
smoothed map and the overlay: measured, a 4000×4000 PNG raised the peak memory of
``igd-fast score --save-maps`` by 1.0 GB (1.2 GB with ``--map-sigma 4``), ~75 bytes per
pixel, so the default keeps one image near 3 GB (Pillow's own decompression-bomb limit,
179 million pixels, would allow ~13 GB). The model's input size (``image_size²``) obeys the same limit. Smoothing: a
Gaussian of sigma ``s`` pads each map by ``4 s`` on every side; 256 covers any sensible
smoothing of the images the pixel limit allows. The parity check runs the whole
reference pipeline on that many model-size images at once.

Only the standard library: every layer may import this module.
"""

from __future__ import annotations

import os

MAX_PIXELS_ENV = "IGD_FAST_MAX_PIXELS"
MAX_SIGMA_ENV = "IGD_FAST_MAX_SIGMA"
MAX_CHECK_BATCH_ENV = "IGD_FAST_MAX_CHECK_BATCH"
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIGMA = 256.0
DEFAULT_MAX_CHECK_BATCH = 64


class LimitError(ValueError):
    """A value past one of the limits; the message names the limit and how to raise it."""


def _env_number(name: str, default: float, cast=float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        v = cast(float(text))
    except ValueError:
        raise LimitError(f"{name}={text!r} is not a number (default {default:g})") from None
    if not v > 0:
        raise LimitError(f"{name}={text!r} must be > 0 (default {default:g})")
    return v


def max_pixels() -> int:
    """Largest width × height of an image (and of the model's input) read or made."""
    return int(_env_number(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, int))


def max_sigma() -> float:
    """Largest Gaussian smoothing sigma, in pixels."""
    return _env_number(MAX_SIGMA_ENV, DEFAULT_MAX_SIGMA)


def max_check_batch() -> int:
    """Largest batch of the export's parity check."""
    return int(_env_number(MAX_CHECK_BATCH_ENV, DEFAULT_MAX_CHECK_BATCH, int))


def check_pixels(width: int, height: int, what: str) -> None:
    """LimitError when ``width × height`` exceeds :func:`max_pixels` (``what`` names the file)."""
    limit = max_pixels()
    if width * height > limit:
        raise LimitError(
            f"{what} is {width}×{height} = {width * height:,} pixels, over the limit of {limit:,} "
            f"(raise it with {MAX_PIXELS_ENV}=N; scoring needs about 75 bytes of memory per pixel)"
        )


def check_sigma(value: float, flag: str) -> float:
    """``value``, or LimitError naming ``flag`` when it exceeds :func:`max_sigma`."""
    limit = max_sigma()
    if value > limit:
        raise LimitError(f"{flag} {value:g} is over the limit of {limit:g} pixels (each map is padded by 4 sigma "
                         f"on every side; raise the limit with {MAX_SIGMA_ENV}=S)")  # fmt: skip
    return value


def check_batch(value: int, flag: str) -> int:
    limit = max_check_batch()
    if value > limit:
        raise LimitError(f"{flag} {value} is over the limit of {limit} images (all are scored at once; raise the "
                         f"limit with {MAX_CHECK_BATCH_ENV}=N)")  # fmt: skip
    return value
