"""The paper's method and its baselines as variants of one model and one loop.

Each variant is a reconstruction term, a latent term and an optional critic; the
training loss is their batch mean and the anomaly score the same per-sample sum:

| variant     | loss (training)                          | score (per image / patch)   | per-pixel map  |
|-------------|------------------------------------------|-----------------------------|----------------|
| ``mse``     | ||x - x_hat||^2 (mean over pixels)       | the same MSE                | (x - x_hat)^2  |
| ``rec``     | l_r = rho|x - x_hat|/L + (1-rho)(1-MS-SSIM) | l_r                      | per-pixel l_r  |
| ``rec-gac`` | l_r + l_h                                | l_r + l_h                   | per-pixel l_r  |
| ``igd``     | l_r + l_h + lambda3 ||d(g(z_alpha))||^2, critic | l_r + l_h            | per-pixel l_r  |
| ``dsvdd``   | ||f(x) - c||^2 (Deep SVDD, one-class)    | ||f(x) - c||^2              | none           |
| ``dsvdd-rec`` | ||f(x) - c||^2 + l_r                   | ||f(x) - c||^2 + l_r        | per-pixel l_r  |

l_h = 1 - exp(-||z - mu||^2 / sigma^2) with mu, sigma^2 from the E-step (re-estimated on
the schedule); Deep SVDD's centre c is the mean of the initial embeddings (computed
once, after BatchNorm calibration, never moved; coordinates within 0.1 of 0 are
pushed to ±0.1 as Ruff et al. do) and its encoder is bias-free (no BatchNorm affine,
no projection bias), so the trivial constant map onto c is not available.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    recon: str | None  # "msssim" (l_r), "mse" or None (no decoder)
    latent: str | None  # "gac" (l_h), "svdd" (||z - c||^2) or None
    critic: bool = False
    bias_free: bool = False

    @property
    def decoder(self) -> bool:
        return self.recon is not None

    @property
    def estep(self) -> str | None:
        """"schedule" (every estep_every epochs), "once" (Deep SVDD's fixed centre) or None."""
        return {"gac": "schedule", "svdd": "once"}.get(self.latent or "")


VARIANTS = {
    v.name: v
    for v in (
        Variant("mse", "mse", None),
        Variant("rec", "msssim", None),
        Variant("rec-gac", "msssim", "gac"),
        Variant("igd", "msssim", "gac", critic=True),
        Variant("dsvdd", None, "svdd", bias_free=True),
        Variant("dsvdd-rec", "msssim", "svdd", bias_free=True),
    )
}
SVDD_EPS = 0.1


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None
