"""Export of a trained model directory's scoring pipeline (``igd-fast export``).

:class:`ScoringPipeline` is the Scorer's reading (Pillow's resize, in tensor ops), its own
scoring module on the reference ops, its per-image finishing and its post-processor: raw
images of any size in, anomalib's outputs out. :func:`export_onnx` writes it as ONNX (batch,
height and width dynamic), :func:`export_openvino` as OpenVINO IR (converted from that ONNX
graph); both carry the thresholds as Model API reads them (docs/deployment.md).
"""

from .onnx import DEFAULT_OPSET, ExportError, check_parity, export_onnx, missing_packages
from .openvino import export_openvino
from .pipeline import ScoringPipeline

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "ScoringPipeline",
    "check_parity",
    "export_onnx",
    "export_openvino",
    "missing_packages",
]
