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
    g = torch.Generator().manual_seed(1)
    return torch.rand(BATCH, 3, SIZE, SIZE, generator=g) * 4.7579 - 2.1179


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
