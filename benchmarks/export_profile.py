"""Where an exported graph's time goes, per op type, in onnxruntime and OpenVINO.

    python benchmarks/export_profile.py DIR [--model demo] [--side 512] [--batch 4] [--threads 2] [--calls 20]

DIR holds ``MODEL.onnx`` and ``MODEL.xml`` (e.g. ``IGD_BENCH_EXPORT_DIR`` of
``benchmarks/test_bench_export.py``). Prints, per runtime, the median call time and the op
types' summed time per call, largest first: onnxruntime's profiler (``enable_profiling``),
OpenVINO's ``PERF_COUNT`` (f32, LATENCY hint, dynamic and static shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def _images(batch: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, (batch, 3, side, side)).astype(np.float32) / 255.0


def _timed(run, calls: int) -> float:
    run()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def profile_onnxruntime(onnx: Path, x: np.ndarray, threads: int, calls: int) -> tuple[float, Counter]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    med = _timed(lambda: sess.run(None, {"input": x}), calls)
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        for _ in range(calls + 1):
            sess.run(None, {"input": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1e6 / (calls + 1)
    return med, by_op


def profile_openvino(xml: Path, x: np.ndarray, threads: int, calls: int, static: bool) -> tuple[float, Counter]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    if static:
        model.reshape({"input": list(x.shape)})
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
           "PERF_COUNT": True}  # fmt: skip
    request = core.compile_model(model, "CPU", cfg).create_infer_request()
    by_op: Counter = Counter()

    def run():
        request.infer({"input": x})

    med = _timed(run, calls)
    for _ in range(calls):
        run()
        for p in request.profiling_info:
            by_op[f"{p.node_type} ({p.exec_type})"] += p.real_time.total_seconds() / calls
    return med, by_op


def _show(title: str, med: float, by_op: Counter, top: int) -> None:
    total = sum(by_op.values())
    print(f"\n{title}: median {med * 1e3:.1f} ms a call; ops {total * 1e3:.1f} ms")
    for op, t in by_op.most_common(top):
        print(f"  {op:<40} {t * 1e3:7.2f} ms  {t / total:5.1%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--model", default="demo")
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--runtimes", default="onnxruntime,openvino,openvino-static")
    a = p.parse_args()
    x = _images(a.batch, a.side)
    for rt in a.runtimes.split(","):
        if rt == "onnxruntime":
            med, ops = profile_onnxruntime(a.dir / f"{a.model}.onnx", x, a.threads, a.calls)
        else:
            med, ops = profile_openvino(a.dir / f"{a.model}.xml", x, a.threads, a.calls, rt.endswith("static"))
        _show(f"{a.model} {rt}, {a.batch}×{a.side}²", med, ops, a.top)


if __name__ == "__main__":
    main()
