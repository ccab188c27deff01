"""The graph ``igd-fast export`` writes: a Scorer's own scoring module, switched to the
pure-PyTorch reference ops (no custom ops, so any runtime runs it), followed by its
post-processor. Nothing of the scoring is written again here.

Input ``input``: N×3×S×S images resized to the model size and ImageNet-normalised (as the
Scorer reads them). Outputs: ``pred_score`` (N, 0.5 = the calibrated threshold),
``pred_label`` (N, int64: score > threshold, and 1 for a NaN score), ``score`` (N, raw) and ``anomaly_map``
(N×1×S×S) when a component has a map. The recipe's stages that the Scorer runs at each
image's own size (map_sigma, map_position, the map image scores) run here at the model
size: the same result for images of that size.
"""

from __future__ import annotations

from torch import Tensor, nn


class ScoringPipeline(nn.Module):
    """``scorer``'s scoring module (calibrated first) and post-processor as one graph."""

    def __init__(self, scorer) -> None:
        super().__init__()
        scorer.calibration()  # the module's statistics and the decision state
        self.module = scorer.module.exportable().eval()
        self.post = scorer.post_processor
        self.image_size = scorer.image_size
        self.has_map = any(c.has_map for c in self.module.components.values())

    @property
    def output_names(self) -> list[str]:
        return ["pred_score", "pred_label", "score"] + (["anomaly_map"] if self.has_map else [])

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.module(x.float())
        pred, label = self.post(out.score)
        return (pred, label, out.score) + ((out.maps,) if self.has_map else ())
