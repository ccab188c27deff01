"""ONNX export of :class:`.pipeline.ScoringPipeline` (torch.onnx's dynamo exporter,
which needs the ``onnx`` and ``onnxscript`` packages: ``pip install igd_fast[export]``)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..outputs import atomic_path, write_json
from ..score.recipe import Recipe
from .pipeline import ScoringPipeline

DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch.onnx's dynamo exporter writes 18 and newer; older ones only by a converter that may fail
MAX_BATCH = 4096  # the exported graph's upper bound on the dynamic batch axis


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
    """Write ``out`` (ONNX) and ``out`` with ``.json`` (what a deployment needs: input
    name and size, normalisation, thresholds, the recipe); returns that record. ``recipe``:
    the scoring recipe (default: the model directory's). With ``check`` the file is run in
    onnxruntime on random inputs of ``check_batch`` images and compared with the Scorer
    (``max_abs_diff`` in the record; ExportError above 1e-4)."""
    scorer, pipe = open_pipeline(model_dir, recipe)
    out = Path(out)
    with atomic_path(out) as tmp:  # a failed or interrupted export leaves no half file
        write_graph(pipe, tmp, opset)
        record = describe(scorer, pipe, model_dir, "onnx", out, opset)
        if check:
            record["max_abs_diff"] = check_parity(tmp, scorer, check_batch)
    write_json(out.with_suffix(".json"), record)
    return record


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
    """``pipe`` as an ONNX file, batch axis dynamic (1..MAX_BATCH), input named ``input``."""
    s = pipe.image_size
    example = torch.zeros(2, 3, s, s)
    log = io.StringIO()
    try:
        # the exporter prints its progress (and a failed opset conversion its traceback)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), torch.no_grad():
            torch.onnx.export(
                pipe, (example,), str(out), input_names=["input"], output_names=pipe.output_names,
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
                opset_version=opset, dynamo=True, external_data=False,
            )  # fmt: skip
    except Exception as e:  # the exporter raises many types; name the step and keep its log
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}\n{log.getvalue()[-2000:]}") from e
    got = written_opset(out)
    if got != opset:  # the exporter fell back to another opset (it converts older ones, and may fail)
        raise ExportError(f"--opset {opset}: the exporter wrote opset {got} instead (it writes opset {MIN_OPSET} "
                          f"and newer; older opsets need a conversion that failed): use --opset {MIN_OPSET} or newer")


def describe(scorer, pipe: ScoringPipeline, model_dir: str | Path, fmt: str, out: Path, opset: int) -> dict:
    """The sidecar record: input, preprocessing, outputs and thresholds of an export."""
    s = scorer.image_size
    cal = scorer.calibration()
    post = scorer.post_processor
    return {
        "format": fmt,
        "file": out.name,
        "opset": opset,
        "model": str(Path(model_dir).resolve()),
        "models": list(scorer.kinds),
        "input": {"name": "input", "shape": ["batch", 3, s, s], "dtype": "float32",
                  "preprocess": f"RGB resized to {s}x{s} (bilinear), /255, minus mean, divided by std",
                  "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},  # fmt: skip
        "outputs": pipe.output_names,
        "threshold": post.threshold,
        "score_scale": post.scale,
        "normalisation": cal.get("normalisation"),
        "pixel_threshold": post.pixel_threshold,
        "map_low": float(cal["map_low"]),
        "map_high": float(cal["map_high"]),
        "alpha": cal.get("alpha"),
        "rule": cal.get("rule"),
        "n_validation": cal.get("n_validation"),
        "anomaly_map_size": [s, s] if pipe.has_map else None,
        "scoring": scorer.scoring,
        "recipe": scorer.recipe.record(),
        "map_stages_at": "the model size (map_sigma, map_position and the map image scores run on the S×S map)",
    }


def onnxruntime_runner(path: str | Path):
    """A function images (N×3×S×S float32) -> {output name: array}, in onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda x: dict(zip(names, sess.run(None, {"input": x}), strict=True))


def check_parity(path: str | Path, scorer, batch: int, tol: float = 1e-4, seed: int = 0, runner=None) -> dict:
    """Run the exported file (onnxruntime unless ``runner`` is given) on ``batch``
    random images and compare each output with the Scorer's; ExportError when one
    differs by more than ``tol``. Returns the largest difference per output, relative to
    the output's largest magnitude where that exceeds 1 (maha maps of random images reach
    1e3 and more: float32 rounding, not a disagreement)."""
    s = scorer.image_size
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, 3, s, s)).astype(np.float32))
    got = (runner or onnxruntime_runner(path))(x.numpy())
    ref = scorer.score_batch(x)
    want = {"pred_score": scorer.pred_scores(ref.score.double().cpu().numpy()), "score": ref.score.cpu().numpy()}
    if ref.maps is not None:
        want["anomaly_map"] = ref.maps.cpu().numpy()
    diff = {k: float(np.abs(got[k].astype(np.float64) - v).max()) / max(1.0, float(np.abs(v).max()))
            for k, v in want.items()}  # fmt: skip
    raw, thr = ref.score.cpu().numpy(), scorer.threshold
    clear = np.abs(raw - thr) > tol * max(1.0, abs(thr))  # within rounding of the threshold either label is right
    if (got["pred_label"][clear] != (raw > thr)[clear]).any() or max(diff.values()) > tol:
        raise ExportError(f"the exported model differs from the Scorer on {batch} random images: {diff} "
                          f"(tolerance {tol})")  # fmt: skip
    return diff
