"""The scoring pipeline of a model directory as one ``nn.Module`` of plain PyTorch ops
(the ``torch`` reference backend: no custom ops), for ONNX and other exporters.

Input ``input``: N×3×S×S images resized to the model size and ImageNet-normalised
(as :class:`igd_fast.score.Scorer` feeds its models). Outputs: ``pred_score`` (N, 0.5 =
the calibrated threshold, see :mod:`igd_fast.score.threshold`), ``pred_label`` (N,
int64: score > threshold, and 1 for a NaN score), ``score`` (N, raw), and ``anomaly_map`` (N×1×S×S, at the
model size; the Scorer resizes it to each image's size, bilinear) when the variant has
one. The same composition as :meth:`Scorer.score_batch`, kept equal by the parity test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.terms import latent_term
from ..reference import patches as ref_patches


def _terms(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(score N, map N×1×H×W or None) of one model: :func:`igd_fast.models.terms.sample_scores`
    with the reference ops."""
    z, x_hat = model(x)
    extra = latent_term(model, z)
    cfg, kind = model.config, model.config.method.recon
    if kind == "msssim":
        return ref_patches.patch_scores(x, x_hat, cfg.msssim(), cfg.rho, extra)
    if kind == "mse":
        err = (x - x_hat.float()).pow(2)
        return err.mean((1, 2, 3)) + extra, err.mean(1, keepdim=True)
    return extra, None


class ScoringPipeline(nn.Module):
    """Global and/or local IGD model -> (pred_score, pred_label, score[, anomaly_map])."""

    def __init__(self, scorer) -> None:
        super().__init__()
        cal = scorer.calibration()
        self.global_model = scorer.global_model
        self.local_model = scorer.local_model
        self.image_size = scorer.image_size
        self.local_size = scorer.local_size
        self.register_buffer("threshold", torch.tensor(float(cal["threshold"]), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(float(cal["score_scale"]), dtype=torch.float32))
        probe = [m for m in (self.global_model, self.local_model) if m is not None]
        self.has_map = any(m.config.method.recon in ("msssim", "mse") for m in probe)
        for m in probe:
            m.eval().to(memory_format=torch.contiguous_format)

    @property
    def output_names(self) -> list[str]:
        return ["pred_score", "pred_label", "score"] + (["anomaly_map"] if self.has_map else [])

    def _local(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        loc = self.local_model
        xl = x
        if self.local_size != x.shape[-1]:
            xl = F.interpolate(x, size=(self.local_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        size, stride = loc.config.patch_size, loc.config.patch_stride
        patches = ref_patches.extract_patches(xl, size, stride)
        s, m = _terms(loc, patches)
        s_l = s.view(x.shape[0], -1).amax(1)
        if m is None:
            return s_l, None
        map_l = ref_patches.fold_patch_maps(m, xl.shape[-2], xl.shape[-1], size, stride, "mean")
        if self.local_size != x.shape[-1]:
            map_l = F.interpolate(map_l, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return s_l, map_l

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = x.float()
        zero = x.new_zeros(x.shape[0])
        s_g, map_g = _terms(self.global_model, x) if self.global_model is not None else (zero, None)
        s_l, map_l = self._local(x) if self.local_model is not None else (zero, None)
        score = s_g + s_l
        # the logistic of igd_fast.score.threshold.normalise_scores, 0.5 exactly at the threshold
        p = 0.5 * (1.0 + torch.tanh((score - self.threshold) / (2.0 * self.scale)))
        label = ~(score <= self.threshold)  # NaN is never "normal": a NaN score is labelled anomalous
        p = torch.where(label & (p <= 0.5), torch.full_like(p, 0.5 + 2.0**-24), p)
        out = (p, label.to(torch.int64), score)
        if self.has_map:
            out = out + (map_l if map_g is None else map_g if map_l is None else map_g + map_l,)
        return out
