"""MS-SSIM configurations (SPEC section 1): the constants travel as one frozen object, and
the Gaussian window every Python backend uses (:func:`gaussian_window`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# ImageNet-normalised pixels lie in [-2.1179, 2.6400].
DATA_RANGE = 4.7579


def gaussian_window(win_size: int, sigma: float) -> list[float]:
    """Normalised 1-D Gaussian taps in double precision: the one Python copy of the formula
    (the reference and Triton cast it; C++ has the same in csrc/ops/gaussian_window.h,
    same libm exp and summation order, so the taps agree exactly)."""
    r = win_size // 2
    g = [math.exp(-((i - r) ** 2) / (2.0 * sigma**2)) for i in range(win_size)]
    s = sum(g)
    return [v / s for v in g]


@dataclass(frozen=True)
class MSSSIMConfig:
    """Window, scales and constants of one MS-SSIM configuration."""

    win_size: int = 11
    sigma: float = 1.5
    weights: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    data_range: float = DATA_RANGE
    k1: float = 0.01
    k2: float = 0.03

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if self.win_size < 1 or self.win_size % 2 != 1 or self.win_size > 15:
            raise ValueError(f"win_size must be odd and in [1, 15], got {self.win_size}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if len(self.weights) < 1:
            raise ValueError("weights must name at least one scale")
        if not self.data_range > 0:
            raise ValueError(f"data_range must be > 0, got {self.data_range}")

    @property
    def scales(self) -> int:
        return len(self.weights)

    @property
    def c1(self) -> float:
        return (self.k1 * self.data_range) ** 2

    @property
    def c2(self) -> float:
        return (self.k2 * self.data_range) ** 2

    @property
    def min_size(self) -> int:
        """Smallest H and W for which the coarsest scale still holds one window.

        Pooling pads odd sizes (as pytorch_msssim does), so scale j has ceil(H / 2**j)
        pixels; we need ceil(H / 2**(M-1)) >= win_size.
        """
        return (self.win_size - 1) * 2 ** (self.scales - 1) + 1

    def window(self) -> list[float]:
        """Normalised 1-D Gaussian taps, the same formula every backend uses."""
        return gaussian_window(self.win_size, self.sigma)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MSSSIMConfig:
        return cls(**{**d, "weights": tuple(d["weights"])})


GLOBAL = MSSSIMConfig()
LOCAL = MSSSIMConfig(win_size=3, weights=(0.0516, 0.3295, 0.3463, 0.2726))

