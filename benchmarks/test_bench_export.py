"""Scoring throughput of the exported pipeline (``igd-fast export``) in onnxruntime and
OpenVINO next to our Scorer, same batch, same CPU threads, one process.

Model: global + local at 256², width 16 (``ModelConfig`` defaults otherwise), trained
for 0 epochs on a small generated dataset (BatchNorm calibrated, E-step done: timing
does not depend on what was learnt). The exported graph is the reference-op pipeline;
the Scorer runs our kernels with folded BatchNorm. Run:

    pytest benchmarks/test_bench_export.py --benchmark-only --benchmark-json=export.json
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from igd_fast.cli import main
from igd_fast.data import make_synthetic_mvtec
from igd_fast.models import ModelConfig
from igd_fast.score import Scorer
from igd_fast.train import train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
torch.set_num_threads(int(os.environ.get("IGD_BENCH_THREADS", "2")))
BATCH, SIZE, WIDTH = 4, 256, 16
GROUP = f"exported scoring 256² global+local, width {WIDTH} (cpu)"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_export")
    make_synthetic_mvtec(root / "data", "synth", n_train=8, n_test_good=1, n_test_bad=1, size=SIZE, seed=0)
    for kind in ("global", "local"):
        train(ModelConfig(kind=kind, image_size=SIZE, width=WIDTH), root / "data", "synth", root / "model",
              epochs=0, batch_size=4, workers=0, val_fraction=0.25, progress=False, device="cpu")  # fmt: skip
    files = {"onnxruntime": root / "x" / "model.onnx"}
    assert main(["export", "--model", str(root / "model"), "--format", "onnx", "--out", str(files["onnxruntime"])]) == 0
    try:
        import openvino  # noqa: F401

        files["openvino"] = root / "x" / "model.xml"
        assert main(["export", "--model", str(root / "model"), "--format", "openvino", "--out",
                     str(files["openvino"])]) == 0  # fmt: skip
    except ImportError:
        pass
    return root / "model", files


def _batch() -> torch.Tensor:
    """Images at the model size, ImageNet-normalised 8-bit pixels (the exported graph reads 8 bits)."""
    from igd_fast.data import imagenet_normalise

    g = torch.Generator().manual_seed(1)
    return imagenet_normalise(torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), generator=g).float() / 255.0)


def _report(benchmark, label: str) -> None:
    med = benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = BATCH / med
    print(f"\n{label}: {BATCH / med:.2f} images/s (median {med * 1e3:.1f} ms per batch of {BATCH})")


def test_bench_export_scorer(benchmark, exported):
    scorer = Scorer(exported[0], device="cpu")
    x = _batch()
    benchmark.group = GROUP
    benchmark.pedantic(lambda: scorer.score_batch(x), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(role="ours", entry="igd_fast Scorer")
    _report(benchmark, "igd_fast Scorer")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_bench_export_runtime(benchmark, exported, runtime):
    if runtime not in exported[1]:
        pytest.skip(f"{runtime} not installed")
    from igd_fast.export.runtime import ExportedScorer

    scorer = ExportedScorer(exported[1][runtime], runtime, BATCH)
    x = _batch()
    ref = Scorer(exported[0], device="cpu").score_batch(x)
    np.testing.assert_allclose(scorer.score_batch(x).score.numpy(), ref.score.numpy(), atol=1e-4)
    benchmark.group = GROUP
    benchmark.pedantic(lambda: scorer.score_batch(x), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(role="peer", entry=f"exported, {runtime}")
    _report(benchmark, f"exported ({runtime})")


# ---------------------------------------------------------------- the self-contained exports
# Raw images to decisions, side by side in one process on the same CPU threads: our torch path
# (Scorer.predict on uint8 arrays: Pillow's resize, the scoring module with our kernels, the
# maps finished at each image's size) against the exported graph (resize, normalisation,
# scoring and finishing inside) in onnxruntime and OpenVINO. Models: the demo's (global +
# local at 128², width 16, `igd-fast demo`'s configs), a `--preset cpu` one (global at 128²
# + the defect model at 224, its map at each image's aspect) and a `--preset cpu-texture` one
# (local at 256² + the defect model at 224). Images: 4 RGB uint8 of 512×512.
# IGD_BENCH_EXPORT_DIR: a folder holding the models (demo/, cpu/, texture/) and their exports
# (demo.onnx, demo.xml, ...), e.g. from an earlier run, to skip training and exporting.
DEPLOY_BATCH, DEPLOY_SIDE = 4, 512
DEPLOY_MODELS = ["demo", "cpu", "texture"]
THREADS = int(os.environ.get("IGD_BENCH_THREADS", "2"))


@pytest.fixture(scope="module")
def deploy_models(tmp_path_factory):
    from pathlib import Path

    from igd_fast.cli.demo import train_small
    from igd_fast.export import export_openvino

    given = os.environ.get("IGD_BENCH_EXPORT_DIR")
    root = Path(given) if given else tmp_path_factory.mktemp("bench_deploy")
    data = root / "data"
    if not (data / "synth").is_dir():
        make_synthetic_mvtec(data, "synth", n_train=16, n_test_good=2, n_test_bad=2, size=256, seed=0)
    if not (root / "demo" / "run.json").is_file():
        train_small(data, "synth", root / "demo", epochs=1, progress=False, device="cpu")
    for m, preset in (("cpu", "cpu"), ("texture", "cpu-texture")):
        if not (root / m / "run.json").is_file():
            assert main(["train", "--data", str(data), "--category", "synth", "--out", str(root / m),
                         "--preset", preset, "--epochs", "1", "--defect-steps", "2", "--val-fraction", "0.25",
                         "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    for m in DEPLOY_MODELS:
        if not (root / f"{m}.xml").is_file():
            assert main(["export", "--model", str(root / m), "--format", "onnx", "--out", str(root / f"{m}.onnx")]) == 0
            export_openvino(root / m, root / f"{m}.xml", onnx_file=root / f"{m}.onnx")
    return root


def _deploy_images() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return list(rng.integers(0, 256, (DEPLOY_BATCH, DEPLOY_SIDE, DEPLOY_SIDE, 3), dtype=np.uint8))


def _deploy_runner(root, model: str, path: str):
    """(a function scoring the images once, a function of its result -> pred_scores)."""
    images = _deploy_images()
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    if path == "torch":
        scorer = Scorer(root / model, device="cpu", batch_size=DEPLOY_BATCH)
        return (lambda: scorer.predict(images)), (lambda out: [p.pred_score for p in out])
    if path == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(str(root / f"{model}.onnx"), opts, providers=["CPUExecutionProvider"])
        return (lambda: sess.run(["pred_score"], {"input": x})), (lambda out: out[0].tolist())
    import openvino as ov

    _, hint, precision, *fixed = path.split("-")  # openvino-LATENCY-f32[-static|-batch]
    core = ov.Core()
    ir = core.read_model(str(root / f"{model}.xml"))
    if fixed == ["static"]:  # the batch's shape fixed before compiling (OpenVINO's advice for a fixed camera)
        ir.reshape({"input": list(x.shape)})
    elif fixed == ["batch"]:  # the batch size alone fixed, any image size (what `score --runtime openvino` does)
        ir.reshape({"input": [x.shape[0], 3, -1, -1]})
    compiled = core.compile_model(ir, "CPU", {
        "PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": THREADS})  # fmt: skip
    request = compiled.create_infer_request()
    return (lambda: request.infer({"input": x})), (lambda out: out["pred_score"].tolist())


DEPLOY_PATHS = [
    "torch",
    "onnxruntime",
    "openvino-LATENCY-f32",
    "openvino-THROUGHPUT-f32",
    "openvino-LATENCY-bf16",
    "openvino-LATENCY-f32-batch",
    "openvino-LATENCY-f32-static",
    "openvino-LATENCY-bf16-static",
]


@pytest.mark.parametrize("path", DEPLOY_PATHS)
@pytest.mark.parametrize("model", DEPLOY_MODELS)
def test_bench_deploy(benchmark, deploy_models, model, path):
    if path.startswith("openvino"):
        pytest.importorskip("openvino")
    run, scores = _deploy_runner(deploy_models, model, path)
    if path != "torch":  # the same decisions as our path (bf16: within its rounding)
        want = _deploy_runner(deploy_models, model, "torch")
        tol = 2e-2 if "bf16" in path else 1e-4
        np.testing.assert_allclose(scores(run()), want[1](want[0]()), atol=tol)
    benchmark.group = f"raw {DEPLOY_SIDE}² images to decisions, {model} model (cpu, {THREADS} threads)"
    benchmark.pedantic(run, rounds=9, iterations=1, warmup_rounds=1)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(role="ours" if path == "torch" else "peer", entry=path,
                                images_per_s=DEPLOY_BATCH / med)  # fmt: skip
    print(f"\n{model} {path}: {DEPLOY_BATCH / med:.2f} images/s (median {med * 1e3:.1f} ms per {DEPLOY_BATCH})")
