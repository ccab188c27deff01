"""ModelConfig: the one config object per model, from the CLI to the checkpoint and back."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..config import DATA_RANGE, GLOBAL, LOCAL, MSSSIMConfig
from .variants import Variant, get_variant

KINDS = ("global", "local")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class ModelConfig:
    """Architecture, loss and optimiser settings of one IGD model (SPEC section 1).

    ``kind="global"`` trains on whole images resized to ``image_size``; ``"local"`` on
    ``patch_size`` patches taken every ``patch_stride`` pixels of ``image_size`` images.
    MS-SSIM fields left as None take the kind's default (GLOBAL: 11×11, 5 scales;
    LOCAL: 3×3, 4 scales). ``gamma=None`` draws γ ~ U(0, 1) per sample (the paper);
    a float fixes it (the published code used 0.2).
    """

    kind: str = "global"
    variant: str = "igd"  # see igd_fast.models.variants: mse, rec, rec-gac, igd, dsvdd, dsvdd-rec
    image_size: int = 256
    patch_size: int = 32
    patch_stride: int = 16
    latent: int = 128
    width: int = 64
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    critic_width: int | None = None
    win_size: int | None = None
    sigma: float | None = None
    weights: tuple[float, ...] | None = None
    data_range: float = DATA_RANGE
    rho: float = 0.15
    lambda3: float = 0.1
    gamma: float | None = 0.2
    lr: float = 1e-4
    weight_decay: float = 1e-6
    estep_every: int = 10
    # E-step: sigma2 = max(mean ||z - mu||^2, sigma2_floor). 0 = SPEC; the published code
    # floors it at 1, which stops sigma2 and l_h collapsing as the embeddings contract
    sigma2_floor: float = 0.0
    # learning rate over the run: "constant" (the paper) or "cosine" (lr * (1 + cos(pi e / E)) / 2
    # at epoch e of E, set at each epoch's start, so a resume with the same --epochs is exact)
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        get_variant(self.variant)
        base = GLOBAL if self.kind == "global" else LOCAL
        self.win_size = base.win_size if self.win_size is None else int(self.win_size)
        self.sigma = base.sigma if self.sigma is None else float(self.sigma)
        self.weights = tuple(base.weights if self.weights is None else (float(w) for w in self.weights))
        self.blocks = tuple(int(b) for b in self.blocks)
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"blocks must name 4 stages of >= 1 block each, got {self.blocks}")
        for name in ("image_size", "patch_size", "patch_stride", "latent", "width", "win_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.critic_width is not None and self.critic_width < 1:
            raise ValueError(f"critic_width must be >= 1, got {self.critic_width!r}")
        if not self.weights or any(not math.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"MS-SSIM scale weights must be finite, >= 0 and not all 0, got {list(self.weights)}")
        for name in ("sigma", "rho", "lambda3", "lr", "weight_decay", "data_range", "sigma2_floor"):
            v = getattr(self, name)
            strict = name in ("sigma", "data_range")
            if not math.isfinite(v) or v < 0 or (strict and v == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if strict else '>= 0'}, got {v!r}")
        if self.rho > 1:
            raise ValueError(f"rho must be in [0, 1], got {self.rho!r}")
        if self.critic_width is None:
            self.critic_width = self.width
        if self.gamma is not None and not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1] or None, got {self.gamma}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.estep_every < 1:
            raise ValueError(f"estep_every must be >= 1, got {self.estep_every}")
        s = self.input_size
        # The encoder halves the size 5 times (ResNet-18 stem + 3 strided stages).
        if s % 32 != 0:
            raise ValueError(f"{self.kind} model input size must be a multiple of 32, got {s}")
        if self.kind == "local" and (self.patch_size > self.image_size or self.patch_stride < 1):
            raise ValueError(
                f"patch_size {self.patch_size} / stride {self.patch_stride} do not fit image_size {self.image_size}"
            )
        ms = self.msssim()
        if s < ms.min_size:
            raise ValueError(
                f"{self.kind} model input of {s}×{s} is too small for MS-SSIM with {ms.scales} scales "
                f"and a {ms.win_size}×{ms.win_size} window (needs >= {ms.min_size}); use fewer scales, "
                f"a smaller window or a larger size"
            )

    @property
    def method(self) -> Variant:
        """The variant's loss / score recipe."""
        return get_variant(self.variant)

    @property
    def input_size(self) -> int:
        """Side of the model's input: the image (global) or the patch (local)."""
        return self.image_size if self.kind == "global" else self.patch_size

    def epoch_lr(self, epoch: int, epochs: int) -> float:
        """Learning rate of 0-based ``epoch`` in a run of ``epochs``."""
        if self.lr_schedule == "constant" or epochs <= 0:
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))

    def msssim(self) -> MSSSIMConfig:
        return MSSSIMConfig(win_size=self.win_size, sigma=self.sigma, weights=self.weights, data_range=self.data_range)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        d["weights"] = list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        d = dict(d)
        for k in ("blocks", "weights"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)
