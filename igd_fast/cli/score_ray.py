"""``igd-fast score --engine ray``: the images scored by Ray actors (one Scorer each, see
:mod:`igd_fast.score.ray_engine`) on a local or an existing Ray cluster, their rows handed
back to ``score``'s writers (the same scores.csv / JSONL / summary.json), resumable through
the output folder's journal (:mod:`igd_fast.score.journal`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ._args import UsageError, positive_int


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (docs/scale_out.md)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): this process (or torchrun's); ray: Ray Data actors, one Scorer each, on "
                        "the cluster of --address (default: a local one started for the run); a rerun into the same "
                        "--out skips the images already scored")  # fmt: skip
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="with --engine ray: the cluster to join (host:port of `ray start --head`, or auto)")
    g.add_argument("--ray-workers", type=positive_int, default=None, metavar="N",
                   help="with --engine ray: scoring actors (default: as many as the cluster's CPUs, or GPUs with "
                        "--ray-gpus, allow)")  # fmt: skip
    g.add_argument("--ray-cpus", type=positive_int, default=1, metavar="C",
                   help="with --engine ray: CPUs (and torch threads) per actor (default 1)")
    g.add_argument("--ray-gpus", type=_positive_float, default=None, metavar="G",
                   help="with --engine ray: GPUs per actor (e.g. 1, or 0.5 to share one); the actors score on cuda")


def check_engine(args: argparse.Namespace, world: int) -> None:
    """UsageError when the engine flags cannot run as given (before anything is scored)."""
    import importlib.util

    if args.engine != "ray":
        given = [f for f, v in (("--address", args.address), ("--ray-workers", args.ray_workers),
                                ("--ray-gpus", args.ray_gpus)) if v is not None]  # fmt: skip
        if given:
            raise UsageError(f"{', '.join(given)} only apply to --engine ray")
        return
    if world > 1:
        raise UsageError("--engine ray runs its own workers: start it as one process, not under torchrun")
    if args.runtime != "torch":
        raise UsageError("--engine ray scores with model directories (--runtime torch)")
    if args.html:  # the page's thumbnails are made where each image is scored, not yet on actors
        raise UsageError("--html is not available with --engine ray yet: score locally for the results page, "
                         "or open the overlays the actors wrote")
    if str(args.device or "").startswith("cuda") and not args.ray_gpus:
        raise UsageError("--device sets where this process calibrates; for the actors to score on GPUs give "
                         "--ray-gpus (GPUs per actor)")  # fmt: skip
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None:
        raise UsageError("--engine ray needs Ray Data: pip install 'igd_fast[ray]'")


def _connect(args: argparse.Namespace) -> bool:
    """Join --address, or start a local cluster; whether this run started (and must stop) it."""
    import ray

    if ray.is_initialized():  # a caller's session (Python, tests): use it as it is
        return False
    local = args.address is None
    if local:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray runs its workers at nice 15: on a busy machine the scorers would starve behind
        # every other process (imports alone took 20x longer here); they are the job
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(address=args.address, logging_level="WARNING", **({"include_dashboard": False} if local else {}))
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"--address {args.address}: cannot join the Ray cluster: {e}") from None
    return True


def _workers(args: argparse.Namespace) -> int:
    import ray

    if args.ray_workers is not None:
        return args.ray_workers
    res = ray.cluster_resources()
    if args.ray_gpus:
        return max(1, int(res.get("GPU", 0) // args.ray_gpus))
    return max(1, int(res.get("CPU", 1) // args.ray_cpus))


def _key(args, scorer, post, outputs) -> dict:
    """What the journal's rows must have been scored with to be reused."""
    from ..score.threshold import model_signature

    return {"model": str(Path(args.model).resolve()), "signature": model_signature(args.model),
            "decision": post.record(), "scoring": scorer.scoring, "precision": scorer.precision,
            "files": [outputs.overlays, outputs.maps, outputs.masks, outputs.tiff], "out": str(args.out),
            "base": str(outputs.base)}  # fmt: skip


def score_on_ray(args, scorer, post, calib: dict, paths: list[Path], outputs, progress) -> dict:
    """Score ``paths`` not yet in ``--out``'s journal on Ray: the part of the run ``score``
    writes (rows, failures, wall time, throughput) and its summary's ``engine`` record."""
    from ..score.journal import Journal

    journal = Journal(args.out, _key(args, scorer, post, outputs))
    done = journal.rows()
    rows = [{"index": i, **done[str(p)]} for i, p in enumerate(paths) if str(p) in done]
    todo = [(i, str(p)) for i, p in enumerate(paths) if str(p) not in done]
    if journal.stale:
        print(f"igd-fast score: {args.out} held rows scored with another model, decision, recipe or outputs; "
              "scoring every image again", file=sys.stderr)  # fmt: skip
    if rows:
        print(f"igd-fast score: {len(rows)} of {len(paths)} images already scored in {args.out}; scoring the other "
              f"{len(todo)}", file=sys.stderr)  # fmt: skip
    t0 = time.perf_counter()
    engine = {"name": "ray", "address": args.address, "resumed": len(rows), "scored_now": len(todo)}
    failed: list[dict] = []
    if todo:
        started = _connect(args)
        try:
            engine.update(_run(args, scorer, post, calib, todo, outputs, journal, rows, failed, progress))
        finally:
            journal.flush()
            if started:
                import ray

                ray.shutdown()
    wall = time.perf_counter() - t0
    n_new = len(rows) - engine["resumed"]
    engine["images_per_second"] = n_new / wall if wall > 0 and n_new else 0.0
    return {"rows": rows, "failed": failed, "wall": wall, "ips": engine["images_per_second"], "engine": engine}


def _run(args, scorer, post, calib, todo, outputs, journal, rows, failed, progress) -> dict:
    import ray
    from tqdm import tqdm

    from ..outputs import OutputError
    from ..score.ray_engine import ScorerSpec, map_scorer, rows_of

    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts images
    workers = _workers(args)
    device = "cuda" if args.ray_gpus else "cpu"
    spec = ScorerSpec.of(scorer, post, calib, device, args.ray_cpus, args.backend)
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in todo])
    scored = map_scorer(ds, spec, outputs, workers, args.ray_cpus, args.ray_gpus or 0.0)
    bar = tqdm(total=len(todo), desc=f"scoring on ray ({workers} workers)", unit="img", disable=args.no_progress,
               file=sys.stderr)  # fmt: skip
    try:
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            new, bad = rows_of(batch)
            rows += new
            failed += bad
            journal.add(new)
            progress.done += len(new)
            bar.update(len(batch["index"]))
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, OutputError):  # a full disk in an actor: the same stop as the local engine's
            raise cause from None
        raise UsageError(f"scoring on Ray failed: {str(cause or e).strip().splitlines()[-1]}; every image "
                         "reported so far is kept: rerun to score the rest") from None  # fmt: skip
    finally:
        bar.close()
    return {"workers": workers, "cpus_per_worker": args.ray_cpus, "gpus_per_worker": args.ray_gpus or 0,
            "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}}  # fmt: skip
