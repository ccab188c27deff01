"""OpenVINO IR export: the ONNX graph of :mod:`.onnx` converted by OpenVINO
(``pip install openvino``), weights kept in float32 (OpenVINO's default would halve
them to float16 and move the maps by ~1e-2).

The IR's outputs are anomalib's four (``pred_score``, ``pred_label``, ``anomaly_map``,
``pred_mask``): OpenVINO Model API's ``AnomalyDetection`` accepts a model of one or four
outputs only, and anomalib's inferencer passes every output to its batch class. The raw
``score`` and ``anomaly_map_raw`` stay named tensors inside; :func:`openvino_runner` adds
them back as outputs. ``rt_info`` ``model_info`` holds :func:`.onnx.deploy_metadata`, and the
input's layout is NCHW, so ``AnomalyDetection.create_model(xml)`` runs it on RGB uint8 images.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..outputs import OutputError, write_json
from ..score.recipe import Recipe
from .onnx import DEFAULT_OPSET, check_parity, deploy_metadata, describe, open_pipeline, record_path, write_graph
from .pipeline import IR_OUTPUTS

FP32 = {"INFERENCE_PRECISION_HINT": "f32"}


def openvino_runner(xml: str | Path, extra: tuple[str, ...] = ("score", "anomaly_map_raw"),
                    config: dict | None = None):  # fmt: skip
    """Images -> {output name: array} in OpenVINO on the CPU, in float32 unless ``config``
    says otherwise (the CPU plugin would otherwise run in bf16 where the CPU has it), with the
    graph's tensors ``extra`` as outputs too (those it holds)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    names = {n for op in model.get_ops() for o in op.outputs() for n in o.get_names()}
    have = {n for o in model.outputs for n in o.get_names()}
    wanted = [n for n in extra if n in names and n not in have]
    if wanted:
        model.add_outputs(wanted)
    compiled = core.compile_model(model, "CPU", dict(FP32, **(config or {})))
    request = compiled.create_infer_request()

    def run(x):
        r = request.infer({"input": x})
        return {o.get_any_name(): r[o] for o in compiled.outputs}

    return run


def export_openvino(
    model_dir: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, check: bool = True, check_batch: int = 2,
    recipe: Recipe | None = None, onnx_file: str | Path | None = None,
) -> dict:
    """Write ``out`` (.xml, with its .bin) and the ``.xml.json`` record; see :func:`.onnx.export_onnx`.
    ``onnx_file``: convert this ONNX export of the same model directory and recipe instead of
    tracing the graph again (the trace is most of an export's time)."""
    import openvino as ov

    scorer, pipe = open_pipeline(model_dir, recipe)
    out = Path(out).with_suffix(".xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".igd_export.") as tmp:
        if onnx_file is None:
            onnx_file = Path(tmp) / "model.onnx"
            write_graph(pipe, onnx_file, opset)
        # read_model, not convert_model: the same ONNX frontend without ovc's telemetry, which forks a
        # process to reach www.google-analytics.com (it hung a CI run at exit, deadlocked in getaddrinfo)
        ov_model = ov.Core().read_model(str(onnx_file))
        record = describe(scorer, pipe, model_dir, "openvino", out, opset)
        for r in [r for r in ov_model.get_results() if r.output(0).get_any_name() not in IR_OUTPUTS]:
            ov_model.remove_result(r)  # its tensor keeps its name inside the graph
        ov_model.inputs[0].get_node().set_layout(ov.Layout("NCHW"))
        for k, v in deploy_metadata(record).items():
            ov_model.set_rt_info(v, ["model_info", k])
        record["outputs"] = [o.get_any_name() for o in ov_model.outputs]
        staged = Path(tmp) / out.name  # written whole here, then renamed into place: never half an IR
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        record["runtime_config"] = dict(FP32)
        if check:
            record["max_abs_diff"] = check_parity(staged, scorer, check_batch, runner=openvino_runner(staged))
        try:
            os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
            os.replace(staged, out)
        except OSError as e:
            raise OutputError(e.errno, e.strerror, str(out)) from e
    write_json(record_path(out), record)
    return record
