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
def interrupts():
    """Within the block SIGTERM stops the run as Ctrl-C does (KeyboardInterrupt), and a
    second Ctrl-C / SIGTERM while the first one unwinds (workers stopping, files being
    closed) is ignored instead of breaking the clean-up with a traceback. Outside the
    main thread signals are left alone."""
    state = {"stopping": False}

    def handler(signum, frame):
        if state["stopping"]:
            return
        state["stopping"] = True
        # multiprocessing's fd-sharing thread (DataLoader workers) reports a connection the
        # dying workers drop through sys.excepthook: noise while the run stops, not an error
        sys.excepthook = _quiet_while_stopping
        raise KeyboardInterrupt

    try:
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield state
        return
    hook = sys.excepthook
    try:
        yield state
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        sys.excepthook = hook


def _quiet_while_stopping(kind, value, tb) -> None:
    import multiprocessing

    if not issubclass(kind, (OSError, EOFError, KeyboardInterrupt, multiprocessing.ProcessError)):
        sys.__excepthook__(kind, value, tb)


def main(argv: list[str] | None = None) -> int:
    from ._args import EXIT_USAGE

    program = argv is None  # the igd-fast program itself (not a call from Python)
    argv = list(sys.argv[1:] if program else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv  # for messages that repeat the command (e.g. the --resume line)
    tune_malloc()
    code = EXIT_USAGE
    try:
        code = _main(args)
        return code
    finally:
        if program:
            _late_signals_exit(code)


def _late_signals_exit(code: int) -> None:
    """The command is over and the interpreter shuts down (atexit hooks, workers): a late
    Ctrl-C / SIGTERM (an impatient second press) ends the process with the command's exit
    code instead of a KeyboardInterrupt traceback from the shutdown."""
    import os

    def handler(signum, frame):
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass


def _main(args: argparse.Namespace) -> int:
    from ..outputs import FolderInUse, OutputError, OutputPathError
    from ._args import EXIT_USAGE

    with interrupts() as state:
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
