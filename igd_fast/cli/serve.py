"""``igd-fast serve``: a trained model directory behind HTTP (see :mod:`igd_fast.serve` and
docs/deployment.md). Loads and calibrates the model first (a bad model directory, device or
key is exit 2 before anything listens), binds, then serves until Ctrl-C / SIGTERM (exit 0)."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from ..serve.settings import ServeSettings
from ._args import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_compile,
    add_device,
    check_device_backend,
    check_precision,
    examples,
    non_negative_float,
    open_fraction,
    positive_int,
)
from .recipe_flags import add_recipe_flags, resolve_recipe

DEFAULTS = ServeSettings()
MB = 2**20


def _positive_float(text: str) -> float:
    v = non_negative_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = examples(
        "IGD_FAST_API_KEY=$(cat key.txt) igd-fast serve --model models/bottle --host 0.0.0.0 --port 8000",
        "igd-fast serve --model models/bottle --no-auth   # loopback only",
        "curl -H 'X-API-Key: KEY' -H 'Content-Type: image/png' --data-binary @a.png localhost:8000/v1/predict",
    )
    p.add_argument("--model", required=True, metavar="DIR",
                   help="trained model directory (global.pt, local.pt and/or defect.pt, run.json, recipe.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    g = p.add_argument_group("access")
    g.add_argument("--api-key-file", metavar="FILE",
                   help="file of accepted API keys, one a line (default: $IGD_FAST_API_KEY); requests send one as "
                        "X-API-Key: KEY or Authorization: Bearer KEY")
    g.add_argument("--no-auth", action="store_true", help="serve without an API key (only on a loopback --host)")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=positive_int, default=DEFAULTS.max_batch,
                   help=f"most images per forward pass (default {DEFAULTS.max_batch}; 1: no micro-batching)")
    g.add_argument("--max-wait-ms", type=non_negative_float, default=DEFAULTS.max_wait_ms,
                   help=f"how long a batch waits for more requests after its first (default {DEFAULTS.max_wait_ms:g})")
    g.add_argument("--max-body-mb", type=_positive_float, default=DEFAULTS.max_body_bytes / MB,
                   help=f"largest request body, MiB (default {DEFAULTS.max_body_bytes / MB:g}; more: 413); the "
                        "pixel limit is IGD_FAST_MAX_PIXELS's")
    g.add_argument("--timeout", type=_positive_float, default=DEFAULTS.timeout_s,
                   help=f"seconds from a request's arrival to its answer (default {DEFAULTS.timeout_s:g}; more: 504)")
    g.add_argument("--max-queue", type=positive_int, default=DEFAULTS.max_queue,
                   help=f"images waiting for the model at most (default {DEFAULTS.max_queue}; more: 503)")
    g.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.add_argument("--alpha", type=open_fraction, default=None,
                   help="target false-alarm rate of the calibration (default 0.05)")
    add_recipe_flags(p)
    add_device(p)
    add_compile(p)  # fmt: skip


def settings(args: argparse.Namespace, env=None) -> ServeSettings:
    """The settings of the flags; UsageError for a missing key or --no-auth off loopback."""
    from ..serve.auth import ApiKeyError, is_loopback, load_keys

    if args.no_auth:
        if args.api_key_file:
            raise UsageError("--no-auth and --api-key-file contradict each other: give one")
        if not is_loopback(args.host):
            raise UsageError(f"--no-auth serves without an API key, so only on a loopback address (--host 127.0.0.1 "
                             f"or ::1), not --host {args.host}; give --api-key-file FILE or $IGD_FAST_API_KEY")
        keys: tuple[str, ...] = ()
    else:
        try:
            keys = load_keys(args.api_key_file) if env is None else load_keys(args.api_key_file, env)
        except ApiKeyError as e:
            raise UsageError(str(e)) from None
    body = int(args.max_body_mb * MB)
    return ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, timeout_s=args.timeout,
                         max_body_bytes=body, max_queue=args.max_queue, api_keys=keys)  # fmt: skip


def _scorer(args: argparse.Namespace):
    """The Scorer (one batch holds a whole micro-batch), calibrated; UsageError naming what fails."""
    from .._dist import resolve_device
    from ..checkpoint import CheckpointError
    from ..score import Scorer
    from ..score.threshold import DEFAULT_ALPHA

    check_device_backend(args)
    recipe = resolve_recipe(args)
    check_precision(recipe["precision"], args.device)
    try:
        scorer = Scorer(args.model, device=resolve_device(args.device), recipe=recipe, batch_size=args.max_batch,
                        backend=args.backend, alpha=DEFAULT_ALPHA if args.alpha is None else args.alpha,
                        compile=args.compile)  # fmt: skip
        scorer.calibration()
    except (CheckpointError, FileNotFoundError, OSError, ValueError, KeyError) as e:
        raise UsageError(f"--model {args.model}: {e}") from None
    return scorer


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _warm_up(scorer) -> None:
    """One image through the model, so the first request does not pay the first-call costs."""
    import numpy as np

    scorer.predict(np.full((scorer.image_size, scorer.image_size, 3), 128, np.uint8))


def prepare(args: argparse.Namespace):
    """(the uvicorn server, its bound socket): settings and key checked, the model loaded,
    calibrated and warmed up, the port bound; UsageError naming what fails first."""
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise UsageError(f"serving needs FastAPI and uvicorn ({e}): pip install 'igd_fast[serve]'") from None
    conf = settings(args)
    scorer = _scorer(args)
    sock = _bind(args.host, args.port)
    _warm_up(scorer)
    config = uvicorn.Config(create_app(scorer, conf), log_level="warning", access_log=args.access_log,
                            limit_concurrency=4 * conf.max_queue, timeout_keep_alive=5)  # fmt: skip
    return uvicorn.Server(config), sock


def run(args: argparse.Namespace) -> int:
    try:
        server, sock = prepare(args)
    except UsageError as e:
        print(f"igd-fast serve: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    conf = server.config.app.state.service.settings
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    auth = "API key required" if conf.auth else "no authentication (loopback)"
    print(f"igd-fast serve: {Path(args.model)} on http://{shown}:{port} ({auth}; max batch {conf.max_batch}, "
          f"max wait {conf.max_wait_ms:g} ms)", file=sys.stderr, flush=True)  # fmt: skip
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the stopping signal once it has shut down
        pass
    print("igd-fast serve: stopped", file=sys.stderr)
    return EXIT_OK
