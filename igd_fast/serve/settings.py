"""What the service accepts and how it batches: each setting declared once, with its default
(the CLI's flags take their defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

# content types a predict request may carry (multipart: the image in the field ``image``)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/octet-stream")
MULTIPART = "multipart/form-data"
# what Pillow may decode: the formats of IMAGE_TYPES, never its rarer parsers
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
IMAGE_FIELD = "image"


@dataclass(frozen=True)
class ServeSettings:
    """``max_batch`` requests at most per forward pass, gathered for up to ``max_wait_ms``
    after the first; ``max_body_bytes`` per request body; ``timeout_s`` from arrival to
    answer; ``max_queue`` images waiting for the model (more: 503 at once). ``api_keys``:
    the accepted keys (empty: no authentication; only on loopback, checked by the CLI).
    The pixel limit is the package's (:mod:`igd_fast.limits`, ``IGD_FAST_MAX_PIXELS``)."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_body_bytes: int = 20 * 2**20
    timeout_s: float = 30.0
    max_queue: int = 256
    api_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_body_bytes < 1:
            raise ValueError("max_batch, max_queue and max_body_bytes must be >= 1")
        if not (self.max_wait_ms >= 0 and self.timeout_s > 0):
            raise ValueError("max_wait_ms must be >= 0 and timeout_s > 0")

    @property
    def auth(self) -> bool:
        return bool(self.api_keys)
