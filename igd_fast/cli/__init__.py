"""``igd-fast``: train | pretrain | score | eval | export | bench | demo | protocol. Each
subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .._malloc import tune_malloc

COMMANDS = {
    "train": "train IGD models (global, local or both) on an MVTec-layout folder",
    "pretrain": "self-supervised (SimCLR-style) encoder pre-training on the training normals, for train --init-encoder",
    "score": "score images with a trained model: scores.csv, heat-map overlays, raw maps",
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv  # for messages that repeat the command (e.g. the --resume line)
    tune_malloc()
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
