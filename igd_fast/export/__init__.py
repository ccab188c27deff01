"""Export of a trained model directory's scoring pipeline (``igd-fast export``).

:class:`ScoringPipeline` is the Scorer's composition in plain PyTorch ops (the
reference backend); :func:`export_onnx` writes it as ONNX with a dynamic batch axis.
"""

from .onnx import DEFAULT_OPSET, ExportError, check_parity, export_onnx, missing_packages
from .pipeline import ScoringPipeline

__all__ = ["DEFAULT_OPSET", "ExportError", "ScoringPipeline", "check_parity", "export_onnx", "missing_packages"]
