"""ONNX export of :class:`.pipeline.ScoringPipeline` (torch.onnx's dynamo exporter,
which needs the ``onnx`` and ``onnxscript`` packages: ``pip install igd_fast[export]``)."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import numpy as np
import torch

from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..outputs import atomic_path, write_json
from ..score.recipe import Recipe
from .pipeline import ONNX_OUTPUTS, ScoringPipeline

DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch.onnx's dynamo exporter writes 18 and newer; older ones only by a converter that may fail
MAX_BATCH = 4096  # the exported graph's upper bound on the dynamic batch axis
MAX_SIDE = 32768  # and on the dynamic height and width


class ExportError(RuntimeError):
    """The export, or its parity check, failed; the message says how."""


def missing_packages(check: bool = True, fmt: str = "onnx") -> list[str]:
    """Packages an export to ``fmt`` (and, with ``check``, its parity check) lacks."""
    import importlib.util

    need = ["onnx", "onnxscript"] + (["openvino"] if fmt == "openvino" else ["onnxruntime"] if check else [])
    return [n for n in need if importlib.util.find_spec(n) is None]


def export_onnx(
    model_dir: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, check: bool = True, check_batch: int = 2,
    recipe: Recipe | None = None,
) -> dict:
    """Write ``out`` (ONNX) and its side-car record ``out`` + ``.json`` (:func:`record_path`:
    input, preprocessing, outputs, thresholds, the recipe); returns that record. ``recipe``:
    the scoring recipe (default: the model directory's). With ``check`` the file is run in
    onnxruntime on ``check_batch`` random 8-bit images of two sizes and compared with the
    Scorer (``max_abs_diff`` in the record; ExportError above 1e-4)."""
    import onnx

    scorer, pipe = open_pipeline(model_dir, recipe)
    out = Path(out)
    with atomic_path(out) as tmp:  # a failed or interrupted export leaves no half file
        write_graph(pipe, tmp, opset)
        record = describe(scorer, pipe, model_dir, "onnx", out, opset)
        model = onnx.load(str(tmp))
        keep_outputs(model, [n for n in ONNX_OUTPUTS if n in pipe.output_names])
        for k, v in deploy_metadata(record).items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(tmp))
        record["outputs"] = [o.name for o in model.graph.output]
        if check:
            record["max_abs_diff"] = check_parity(tmp, scorer, check_batch)
    write_json(record_path(out), record)
    return record


def record_path(model_file: str | Path) -> Path:
    """The side-car record of an exported file: its full name + ``.json`` (``m.onnx.json``,
    ``m.xml.json``), so an ONNX and an IR export to one stem keep their own records."""
    p = Path(model_file)
    return p.with_name(p.name + ".json")


def keep_outputs(model, names: list[str]) -> None:
    """Keep only ``names`` as the ONNX graph's outputs (in that order); the others stay
    tensors of that name inside the graph (:func:`onnxruntime_runner` can add them back)."""
    outs = {o.name: o for o in model.graph.output}
    kept = [copy.deepcopy(outs[n]) for n in names]
    del model.graph.output[:]
    model.graph.output.extend(kept)


def deploy_metadata(record: dict) -> dict[str, str]:
    """What a deployment reads from the file itself (ONNX ``metadata_props``, the IR's
    ``rt_info`` ``model_info``): the keys OpenVINO Model API's ``AnomalyDetection`` reads
    (``image_threshold``, ``pixel_threshold``, ``normalization_scale``, ``task``, ``labels``,
    ``mean_values`` / ``scale_values`` of 0..255 pixels, ...) and how the outputs were made."""
    s = record["scoring_size"]
    meta = {
        "model_type": "AnomalyDetection",
        "task": "segmentation" if "anomaly_map" in record["outputs"] else "classification",
        "labels": "Normal Anomaly",
        "image_threshold": repr(float(record["threshold"])),  # repr: all digits, not OpenVINO's 6
        "pixel_threshold": repr(float(record["pixel_threshold"])),
        "normalization_scale": repr(float(record["score_scale"])),
        "pixel_normalization_scale": repr(float(record["pixel_scale"])),
        # pixels 0..255 -> the graph's [0, 1] input; the ImageNet normalisation is in the graph
        "mean_values": "0 0 0",
        "scale_values": "255 255 255",
        "reverse_input_channels": "False",  # the input is RGB
        "embedded_processing": "False",
        "resize_type": "standard",  # unused: the input is dynamic, the graph resizes itself
        "scoring_size": f"{s}" if not record["keep_aspect"] else f"{s} (longer side, aspect kept)",
        "preprocessing": record["input"]["preprocess"],
        "pred_score": "0.5 * (1 + tanh((score - image_threshold) / (2 * normalization_scale)))",
        "anomaly_map": "clip((map - pixel_threshold) / pixel_normalization_scale + 0.5, 0, 1)",
        "pred_mask": "map > pixel_threshold",
        "producer": "igd_fast",
    }
    return meta


def written_opset(path: str | Path) -> int | None:
    """The default-domain opset an ONNX file declares (None when it declares none)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx")), None)


def open_pipeline(model_dir: str | Path, recipe: Recipe | None = None):
    """(Scorer on the reference backend, its ScoringPipeline in eval mode)."""
    from ..score import Scorer

    # plain convolutions in the graph: the polyphase rewrite is a CPU-eager speed-up; the
    # networks in fp32: a runtime runs the graph in its own arithmetic
    scorer = Scorer(model_dir, device="cpu", backend="torch", channels_last=False, fuse_upsample=False, recipe=recipe,
                    precision="fp32")  # fmt: skip
    return scorer, ScoringPipeline(scorer).eval()


def write_graph(pipe: ScoringPipeline, out: Path, opset: int = DEFAULT_OPSET) -> None:
    """``pipe`` as an ONNX file: input ``input``, batch, height and width dynamic."""
    example = torch.rand(2, 3, pipe.image_size + 13, pipe.image_size + 29)  # no side equal to S: not specialised
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH), 2: torch.export.Dim("height", min=2, max=MAX_SIDE),
            3: torch.export.Dim("width", min=2, max=MAX_SIDE)}  # fmt: skip
    log = io.StringIO()
    try:
        # the exporter prints its progress (and a failed opset conversion its traceback)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), torch.no_grad():
            torch.onnx.export(
                pipe, (example,), str(out), input_names=["input"], output_names=pipe.output_names,
                dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True, external_data=False,
            )  # fmt: skip
    except Exception as e:  # the exporter raises many types; name the step and keep its log
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}\n{log.getvalue()[-2000:]}") from e
    got = written_opset(out)
    if got != opset:  # the exporter fell back to another opset (it converts older ones, and may fail)
        raise ExportError(f"--opset {opset}: the exporter wrote opset {got} instead (it writes opset {MIN_OPSET} "
                          f"and newer; older opsets need a conversion that failed): use --opset {MIN_OPSET} or newer")


def describe(scorer, pipe: ScoringPipeline, model_dir: str | Path, fmt: str, out: Path, opset: int) -> dict:
    """The side-car record: input, preprocessing, outputs and thresholds of an export."""
    s = scorer.image_size
    cal = scorer.calibration()
    post = scorer.post_processor
    size = f"its longer side to {s}, aspect kept" if pipe.keep_aspect else f"{s}x{s}"
    return {
        "format": fmt,
        "file": out.name,
        "contract": "raw-images",  # N×3×H×W RGB in [0, 1] in; resize and normalisation inside
        "opset": opset,
        "model": str(Path(model_dir).resolve()),
        "models": list(scorer.kinds),
        "input": {"name": "input", "shape": ["batch", 3, "height", "width"], "dtype": "float32", "layout": "NCHW",
                  "range": [0.0, 1.0], "channels": "RGB",
                  "preprocess": f"in the graph: rounded to 8 bits, resized ({size}) as Pillow's BILINEAR, "
                                "ImageNet-normalised (mean, std below)",
                  "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},  # fmt: skip
        "scoring_size": s,
        "keep_aspect": pipe.keep_aspect,
        "outputs": pipe.output_names,
        "threshold": post.threshold,
        "score_scale": post.scale,
        "normalisation": cal.get("normalisation"),
        "pixel_threshold": post.pixel_threshold,
        "pixel_scale": post.pixel_scale,
        "map_low": float(cal["map_low"]),
        "map_high": float(cal["map_high"]),
        "alpha": cal.get("alpha"),
        "rule": cal.get("rule"),
        "n_validation": cal.get("n_validation"),
        "anomaly_map_size": "the input's height x width" if pipe.has_map else None,
        "scoring": scorer.scoring,
        "recipe": scorer.recipe.record(),
    }


def onnxruntime_runner(path: str | Path, extra: tuple[str, ...] = (), threads: int | None = None):
    """A function images (N×3×H×W float32 in [0, 1]) -> {output name: array}, in onnxruntime;
    ``extra``: tensors inside the graph to return as well (``score``, ``anomaly_map_raw``)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for name in extra:
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda x: dict(zip(names, sess.run(None, {"input": x}), strict=True))


PARITY_SIZES = ((0, 0), (7, 40))  # the check's image sizes: S×S and (S+7)×(S+40)


def check_parity(path: str | Path, scorer, batch: int, tol: float = 1e-4, seed: int = 0, runner=None,
                 map_tol: float = 1e-3) -> dict:  # fmt: skip
    """Run the exported file (onnxruntime unless ``runner`` is given) on ``batch`` random
    8-bit images of each of two sizes and compare with the Scorer's predictions of the same
    pixels; ExportError when pred_score or the raw score (relative to its magnitude where that
    exceeds 1) differs by more than ``tol``, the raw map by more than ``map_tol`` of the
    heat-map range or, where the map is larger, of its own magnitude (float32 rounding of a
    224² defect map reached 1.4e-4 of the range; a texture model's Mahalanobis map reaches 350×
    its range on random images, where rounding is relative), or a label or a mask pixel away
    from its threshold differs. Returns the largest difference per output."""
    rng = np.random.default_rng(seed)
    run = runner or onnxruntime_runner(path, ("score", "anomaly_map_raw"))
    post = scorer.post_processor
    diff: dict[str, float] = {}
    for dh, dw in PARITY_SIZES:
        images = rng.integers(0, 256, (batch, scorer.image_size + dh, scorer.image_size + dw, 3), dtype=np.uint8)
        got = run(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)
        for k, v in compare(got, scorer.predict(list(images)), post, tol).items():
            diff[k] = max(diff.get(k, 0.0), v)
    if max(v for k, v in diff.items() if k != "anomaly_map") > tol or diff.get("anomaly_map", 0.0) > map_tol:
        raise ExportError(f"the exported model differs from the Scorer on random images: {diff} (tolerance {tol}, "
                          f"maps {map_tol} of the heat-map range or of the map's magnitude)")
    return diff


def compare(got: dict, preds: list, post, tol: float) -> dict[str, float]:
    """Largest differences of exported outputs ``got`` from the Scorer's :class:`Prediction` s;
    ExportError when a label, or a mask pixel farther than ``tol`` from its threshold, differs."""
    score = np.array([p.score for p in preds])
    out = {"pred_score": float(np.abs(got["pred_score"] - np.array([p.pred_score for p in preds])).max()),
           "score": float(np.abs(got["score"] - score).max()) / max(1.0, float(np.abs(score).max()))}  # fmt: skip
    clear = np.abs(score - post.threshold) > tol * max(1.0, abs(post.threshold))
    if (got["pred_label"].astype(np.int64) != np.array([p.pred_label for p in preds]))[clear].any():
        raise ExportError(f"the exported model's pred_label differs from the Scorer's: {got['pred_label']}")
    if preds[0].anomaly_map is None or "anomaly_map_raw" not in got:
        return out
    ref = np.stack([p.anomaly_map for p in preds])[:, None]
    # in heat-map ranges, or in the map's own magnitude where that is larger (float32 is relative)
    out["anomaly_map"] = float((np.abs(got["anomaly_map_raw"] - ref) / np.maximum(post.pixel_scale, np.abs(ref))).max())
    far = np.abs(ref - post.pixel_threshold) > tol * post.pixel_scale
    if "pred_mask" in got and (got["pred_mask"].astype(bool) != (ref > post.pixel_threshold))[far].any():
        raise ExportError("the exported model's pred_mask differs from the Scorer's away from the pixel threshold")
    return out
