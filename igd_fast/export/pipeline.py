"""The graph ``igd-fast export`` writes: raw images in, anomalib's outputs out. It is the
Scorer's own scoring module (switched to the pure-PyTorch reference ops, so any runtime runs
it) and post-processor, with the Scorer's reading in front and its per-image finishing after:

  input ``input``  N×3×H×W float32 RGB in [0, 1] (anomalib's convention), N, H and W dynamic
  read             taken to 8 bits and resized as Pillow's BILINEAR resize (:mod:`.resize`) to
                   the scoring size (S×S; with a component that keeps the aspect, the longer
                   side at S), then ImageNet-normalised: what the Scorer does to a file
  score            the scoring module's terms and combined map at the scoring size
  finish           the map brought to H×W and finished there (map_sigma, map_position, the
                   map image scores), as the Scorer does at each image's own size
  outputs          ``pred_score`` (N, 0.5 at the threshold), ``pred_label`` (N, int64, 1 =
                   anomalous, and for a NaN score), ``anomaly_map`` (N×1×H×W, the map in [0, 1]
                   with the pixel threshold at 0.5), ``pred_mask`` (N×1×H×W bool, map > pixel
                   threshold), ``score`` (N, raw) and ``anomaly_map_raw`` (N×1×H×W, the raw map);
                   a model without a map: ``pred_score``, ``pred_label``, ``score``
"""

from __future__ import annotations

from torch import Tensor, nn

from ..data import imagenet_normalise
from ..reference.resize import bilinear_matmul
from .resize import pillow_resize

MAP_OUTPUTS = ["pred_score", "pred_label", "anomaly_map", "pred_mask", "score", "anomaly_map_raw"]
SCORE_OUTPUTS = ["pred_score", "pred_label", "score"]
# the outputs the exported files keep as graph outputs; the others stay named tensors inside
# (Model API's AnomalyDetection and anomalib's inferencer take exactly anomalib's four)
ONNX_OUTPUTS = ["pred_score", "pred_label", "anomaly_map", "pred_mask", "score"]
IR_OUTPUTS = ["pred_score", "pred_label", "anomaly_map", "pred_mask"]


class ScoringPipeline(nn.Module):
    """``scorer``'s reading, scoring module (calibrated first), finishing and post-processor
    as one graph over raw images of any size."""

    def __init__(self, scorer) -> None:
        super().__init__()
        scorer.calibration()  # the module's statistics and the decision state
        self.module = scorer.module.exportable().eval()
        self.post = scorer.post_processor
        self.image_size = scorer.image_size
        self.keep_aspect = self.module.keep_aspect
        self.has_map = any(c.has_map for c in self.module.components.values())

    @property
    def output_names(self) -> list[str]:
        return list(MAP_OUTPUTS if self.has_map else SCORE_OUTPUTS)

    def scoring_size(self, h, w) -> tuple:
        """The (h, w) images of H×W are scored at (:func:`igd_fast.score.io.scoring_size`)."""
        s = self.image_size
        return aspect_size(h, w, s) if self.keep_aspect else (s, s)

    def read(self, x: Tensor) -> Tensor:
        """Raw N×3×H×W images in [0, 1] -> the scoring module's input."""
        return imagenet_normalise(pillow_resize(x, self.scoring_size(x.shape[-2], x.shape[-1])))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        h, w = x.shape[-2], x.shape[-1]
        m = self.module
        out = m.raw(self.read(x), self.has_map)
        score = out.score
        if not self.has_map:
            return (*self.post(score), score)
        maps = m.finish_map(bilinear_matmul(out.maps, (h, w)))  # the map at the input's size
        if m.map_scored:
            score = m.image_score_of(maps).to(score.dtype)
        pred, label = self.post(score)
        return pred, label, self.post.map_01(maps), self.post.mask(maps), score, maps


def aspect_size(h, w, side: int) -> tuple:
    """(h, w) scaled so the longer side is ``side``, aspect kept, as the Scorer rounds it; sizes
    may be symbolic (an exported graph's input shape)."""
    return _rounded_ratio(h * side, max(h, w)), _rounded_ratio(w * side, max(h, w))


def _rounded_ratio(num, den):
    """round(num / den) half to even, as Python's round in :func:`igd_fast.data.working_size`
    (integer arithmetic, so it traces over symbolic sizes), at least 1."""
    t = 2 * num + den
    q = t // (2 * den)
    half = (t % (2 * den) == 0) * (q % 2)  # an exact half rounded up to an odd q: back to even
    return max(q - half, 1)
