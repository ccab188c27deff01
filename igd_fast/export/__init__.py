"""Export of a trained model directory's scoring pipeline (``igd-fast export``).

:class:`ScoringPipeline` is the Scorer's own scoring module on the reference ops and its
post-processor; :func:`export_onnx` writes it as ONNX with a dynamic batch axis,
:func:`export_openvino` as OpenVINO IR (converted from that ONNX graph).
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
