"""The steps of ``scripts/gpu_check.sh`` that are not pytest files, and its summary.

    python benchmarks/gpu_check.py steps --device cuda --out OUT     # both below, one process
    python benchmarks/gpu_check.py scoring --device cuda --out OUT   # Scorer images/s, fp32 and bf16
    python benchmarks/gpu_check.py train --device cuda --out OUT     # one M-step per model, fp32 and bf16 AMP
    python benchmarks/gpu_check.py summary --out OUT                 # OUT/gpu_check.json + OUT/gpu_check.md

``scoring``: global + local IGD at width 64, 256² (random weights with a set descriptor: time
does not depend on what was learnt), ``Scorer.score_batch`` of a batch, medians.
``train``: the M-step (autoencoder + critic update) of each model at width 64 (global 256²,
local 256² images cut into its patches), fp32 and bf16 autocast (fp32 master weights, loss
kernels fp32), medians. ``--tiny`` (the dry run on a CPU): width 8, 64² images, one timed run.

``summary`` reads every step's file in OUT: the pytest-benchmark JSONs (``bench_*.json``,
compared by ``benchmarks/report.py``), the JUnit XML of the tests (``tests.xml``), the steps
above (``step_*.json``) and the machine (``machine.txt``), and writes one JSON and one
Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import rows  # noqa: E402  (benchmarks/report.py, beside this file)

PAPER = {"width": 64, "image_size": 256, "batch": 16, "train_batch": 8, "repeats": 5}
TINY = {"width": 8, "image_size": 64, "batch": 2, "train_batch": 2, "repeats": 1,
        "blocks": (1, 1, 1, 1), "latent": 16}  # fmt: skip


def _config(kind: str, size: dict):
    from igd_fast.models import ModelConfig

    kw = {k: size[k] for k in ("blocks", "latent") if k in size}
    if kind == "global" and "blocks" in size:
        kw["weights"] = (0.3, 0.3, 0.4)  # 3 scales: 64² is too small for the paper's 5
    return ModelConfig(kind=kind, image_size=size["image_size"], width=size["width"], **kw)


def _median_time(fn, repeats: int, device) -> float:
    import torch

    fn()  # warm-up: kernel selection, oneDNN primitives
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _precisions(device) -> list[str]:
    from igd_fast.score.precision import bf16_support

    return ["fp32", "bf16"] if bf16_support(device) is None else ["fp32"]


def scoring(device, size: dict) -> dict:
    import torch

    from igd_fast.checkpoint import save_checkpoint
    from igd_fast.models import IGD
    from igd_fast.score import Scorer

    torch.manual_seed(0)
    model_dir = Path(tempfile.mkdtemp(prefix="gpu_check_models_"))
    for kind in ("global", "local"):
        m = IGD(_config(kind, size))
        m.descriptor.set(torch.randn(m.config.latent) * 0.1, 4.0)
        save_checkpoint(model_dir / f"{kind}.pt", m)
    n, s = size["batch"], size["image_size"]
    x = torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(1)) * 4.7579 - 2.1179
    out = {}
    for p in _precisions(device):
        scorer = Scorer(model_dir, device=device, batch_size=n, precision=p)
        x_dev = x.to(device)
        t = _median_time(lambda sc=scorer, xd=x_dev: sc.score_batch(xd), size["repeats"], device)
        out[p] = {"seconds_per_batch": t, "images_per_s": n / t}
    return {"step": "scoring", "what": f"Scorer.score_batch, global + local, width {size['width']}, "
            f"{s}², batch {n}", "results": out}  # fmt: skip


def train(device, size: dict) -> dict:
    import torch

    from igd_fast.models import IGD
    from igd_fast.train import MStep, make_optimizers, model_inputs

    n, s = size["train_batch"], size["image_size"]
    out = {}
    for kind in ("global", "local"):
        cfg = _config(kind, size)
        images = (torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(0)) * 4.7579 - 2.1179).to(device)
        for p in _precisions(device):
            torch.manual_seed(0)
            model = IGD(cfg).to(device).to(memory_format=torch.channels_last)
            step = MStep(model, *make_optimizers(model), amp_dtype=torch.bfloat16 if p == "bf16" else None)
            x = model_inputs(images, cfg).contiguous(memory_format=torch.channels_last)
            gen = torch.Generator().manual_seed(0)
            t = _median_time(lambda st=step, xx=x, g=gen: st(xx, g), size["repeats"], device)
            out[f"{kind} {p}"] = {"seconds_per_step": t, "images_per_s": n / t, "model_inputs": int(x.shape[0])}
    return {"step": "train", "what": f"one M-step (autoencoder + critic), width {size['width']}, {s}² images, "
            f"batch {n}, channels_last", "results": out}  # fmt: skip


def _tests(path: Path) -> dict | None:
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def summary(out: Path) -> dict:
    machine = (out / "machine.txt").read_text().strip() if (out / "machine.txt").is_file() else ""
    res = {"machine": machine, "tests": _tests(out / "tests.xml"), "benchmarks": {}, "steps": []}
    for f in sorted(out.glob("bench_*.json")):
        data = json.loads(f.read_text())
        benches = data.get("benchmarks", [])
        res["benchmarks"][f.stem] = {"n": len(benches), "comparisons": rows(data),
                                     "medians_s": {b["name"]: b["stats"]["median"] for b in benches}}  # fmt: skip
    res["steps"] = [json.loads(f.read_text()) for f in sorted(out.glob("step_*.json"))]
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    (out / "gpu_check.md").write_text(markdown(res))
    return res


def markdown(res: dict) -> str:
    lines = ["# GPU check", "", "```", res["machine"] or "(machine not recorded)", "```", ""]
    t = res["tests"]
    lines += [f"Tests: {t['tests']} run, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped."
              if t else "Tests: not run.", ""]  # fmt: skip
    comps = [r for b in res["benchmarks"].values() for r in b["comparisons"]]
    lines += ["| benchmark | ours | median | peer | median | speed-up | target |", "|---|---|---|---|---|---|---|"]
    for r in comps:
        tgt = "" if r["target"] is None else f">= {r['target']:g}x ({'met' if r['met'] else 'NOT met'})"
        lines.append(f"| {r['group']} | {r['ours']} | {r['ours_median_s'] * 1e3:.2f} ms | {r['peer']} | "
                     f"{r['peer_median_s'] * 1e3:.2f} ms | {r['ratio']:.2f}x | {tgt} |")  # fmt: skip
    if not comps:
        lines.append("| (no benchmark ran: no GPU) | | | | | | |")
    for st in res["steps"]:
        lines += ["", f"{st['step']}: {st['what']}", "", "| entry | images/s |", "|---|---|"]
        lines += [f"| {k} | {v['images_per_s']:.2f} |" for k, v in st["results"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("steps", "scoring", "train", "summary"))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the dry run on a CPU)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.step == "summary":
        print(markdown(summary(a.out)))
        return 0
    import torch

    failed = 0
    for name, fn in (("scoring", scoring), ("train", train)):
        if a.step not in (name, "steps"):
            continue
        try:
            rec = fn(torch.device(a.device), TINY if a.tiny else PAPER)
        except Exception as e:  # the other step and the summary still run
            print(f"step {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed = 1
            continue
        rec.update(device=a.device, tiny=a.tiny)
        (a.out / f"step_{name}.json").write_text(json.dumps(rec, indent=2))
        print(json.dumps(rec["results"], indent=1))
    return failed


if __name__ == "__main__":
    sys.exit(main())
