"""``igd-fast``: train | pretrain | score | serve | eval | export | bench | demo | protocol. Each
subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys

from .._malloc import tune_malloc

COMMANDS = {
    "train": "train IGD models (global, local or both) on an MVTec-layout folder",
    "pretrain": "self-supervised (SimCLR-style) encoder pre-training on the training normals, for train --init-encoder",
    "score": "score images with a trained model: scores.csv, heat-map overlays, raw maps",
    "serve": "serve a trained model over HTTP: POST /v1/predict with micro-batching, API keys, limits, metrics",
    "eval": "evaluate a trained model on a category's test split: AUROC, pixel AUROC, AUPRO",
    "export": "export a model's scoring pipeline (pred_score, score, map) as ONNX",
    "bench": "time the fused kernels against pytorch_msssim and the reference",
    "demo": "generate a small dataset, train, score and evaluate it end to end",
    "protocol": "the paper's one-class protocols (MNIST one-vs-rest, MVTec), small/contaminated training sets",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="igd-fast",
        description="Interpolated Gaussian Descriptor anomaly detection on fused kernels.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        try:
            mod = importlib.import_module(f"igd_fast.cli.{name}")
        except ImportError:
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


@contextlib.contextmanager
def interrupts(then_quiet: bool = False):
    """Within the block SIGTERM stops the run as Ctrl-C does (KeyboardInterrupt), and a
    second Ctrl-C / SIGTERM while the first one unwinds (workers stopping, files being
    closed) is ignored instead of breaking the clean-up with a traceback. After it the
    handlers are restored, or with ``then_quiet`` (the program is about to exit) and the
    block ended without an error replaced by :func:`_quiet_shutdown`'s. Outside the main
    thread signals are left alone."""
    state = {"stopping": False}

    def handler(signum, frame):
        if _stopping(state):  # here, or training's own handler took the first one
            return
        state["stopping"] = True
        raise KeyboardInterrupt

    def excepthook(kind, value, tb) -> None:
        # multiprocessing's fd-sharing thread (DataLoader workers) reports a connection the
        # dying workers drop through sys.excepthook: noise while the run stops, not an error
        if not (_stopping(state) and _worker_noise(kind)):
            previous(kind, value, tb)

    try:
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield state
        return
    previous, sys.excepthook = sys.excepthook, excepthook

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)
        sys.excepthook = previous

    try:
        yield state
    except BaseException:  # an error on its way out keeps its traceback (and OSError is one)
        restore()
        raise
    if then_quiet:
        _quiet_shutdown()
    else:
        restore()


def _worker_noise(kind: type) -> bool:
    import multiprocessing

    return issubclass(kind, (OSError, EOFError, KeyboardInterrupt, multiprocessing.ProcessError))


def _quiet_worker_noise(kind, value, tb) -> None:
    if not _worker_noise(kind):
        sys.__excepthook__(kind, value, tb)


def main(argv: list[str] | None = None) -> int:
    program = argv is None  # the igd-fast program itself (not a call from Python)
    argv = list(sys.argv[1:] if program else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv  # for messages that repeat the command (e.g. the --resume line)
    tune_malloc()
    with interrupts(then_quiet=program) as state:
        return _main(args, state)


def _quiet_shutdown() -> None:
    """The command is over and the interpreter shuts down (atexit hooks, workers): a late
    Ctrl-C / SIGTERM (an impatient second or third press) is ignored, down to the
    interpreter's last steps, instead of a KeyboardInterrupt traceback from a finaliser or
    a death by the signal; the workers' dropped connections are not reported."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.excepthook = _quiet_worker_noise


def _main(args: argparse.Namespace, state: dict) -> int:
    from ..outputs import FolderInUse, OutputError, OutputPathError
    from ._args import EXIT_USAGE

    try:
        return int(args._run(args) or 0)
    # the verbs handle these where they know more (which file, what to rerun); this is
    # the net under all of them: a message and exit 2, never a traceback
    except (OutputError, OutputPathError, FolderInUse) as e:
        if not _stopping(state):
            print(f"igd-fast {args.command}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        return _interrupted(args.command, state)
    except KeyboardInterrupt:
        return _interrupted(args.command, state)
    except Exception:
        # code that caught the KeyboardInterrupt and raised something else (an extension
        # module being imported says "initialization failed"): still the user's Ctrl-C
        if _stopping(state):
            return _interrupted(args.command, state)
        raise


def _stopping(state: dict) -> bool:
    """True once Ctrl-C / SIGTERM arrived (here, or in training's own handler)."""
    loop = sys.modules.get("igd_fast.train.loop")
    return bool(state["stopping"] or (loop is not None and loop.stop_requested()))


def _interrupted(command: str, state: dict) -> int:
    from ._args import EXIT_USAGE

    state["stopping"] = True
    print(f"igd-fast {command}: interrupted (Ctrl-C / SIGTERM); every file already written is complete (written "
          "atomically), this run's results were not written", file=sys.stderr)  # fmt: skip
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
