"""OpenVINO IR export: the ONNX graph of :mod:`.onnx` converted by OpenVINO
(``pip install openvino``), weights kept in float32 (OpenVINO's default would halve
them to float16 and move the maps by ~1e-2)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..outputs import OutputError, write_json
from ..score.recipe import Recipe
from .onnx import DEFAULT_OPSET, check_parity, describe, open_pipeline, write_graph


def openvino_runner(xml: str | Path):
    """Images -> {output name: array} in OpenVINO on the CPU, in float32 (the CPU plugin
    would otherwise run in bf16 where the CPU has it)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(x):
        r = compiled({"input": x})
        return {o.get_any_name(): r[o] for o in compiled.outputs}

    return run


def export_openvino(
    model_dir: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, check: bool = True, check_batch: int = 2,
    recipe: Recipe | None = None,
) -> dict:
    """Write ``out`` (.xml, with its .bin) and the ``.json`` record; see :func:`.onnx.export_onnx`."""
    import openvino as ov

    scorer, pipe = open_pipeline(model_dir, recipe)
    out = Path(out).with_suffix(".xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".igd_export.") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        write_graph(pipe, onnx_file, opset)
        ov_model = ov.convert_model(str(onnx_file))
        record = describe(scorer, pipe, model_dir, "openvino", out, opset)
        # the keys OpenVINO's Model API reads for anomaly models (rt_info model_info)
        info = {"model_type": "AnomalyDetection", "task": "segmentation" if pipe.has_map else "classification",
                "image_threshold": record["threshold"], "pixel_threshold": record["pixel_threshold"],
                "normalization_scale": record["score_scale"], "image_shape": [scorer.image_size] * 2,
                "labels": "Normal Anomaly"}  # fmt: skip
        for k, v in info.items():
            # floats as their repr: OpenVINO would keep only 6 digits
            ov_model.set_rt_info(repr(v) if isinstance(v, float) else v, ["model_info", k])
        staged = Path(tmp) / out.name  # written whole here, then renamed into place: never half an IR
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        record["runtime_config"] = {"INFERENCE_PRECISION_HINT": "f32"}
        if check:
            record["max_abs_diff"] = check_parity(staged, scorer, check_batch, runner=openvino_runner(staged))
        try:
            os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
            os.replace(staged, out)
        except OSError as e:
            raise OutputError(e.errno, e.strerror, str(out)) from e
    write_json(out.with_suffix(".json"), record)
    return record
