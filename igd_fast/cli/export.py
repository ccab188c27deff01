"""``igd-fast export``: the scoring pipeline of a model directory as one ONNX file
(``--format onnx``) or as OpenVINO IR (``--format openvino``: .xml + .bin, float32).

The graph uses the pure-PyTorch reference ops (backend "torch"), so any ONNX runtime
runs it, and is self-contained: input ``input`` (N×3×H×W RGB in [0, 1], N, H and W
dynamic; the resize and the ImageNet normalisation are inside), outputs anomalib's
``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask`` (maps at H×W), then
``score`` (ONNX; the IR keeps anomalib's four). See docs/deployment.md.
The graph computes the model directory's scoring recipe (``recipe.json``; scoring flags
override it, as in ``score`` and ``eval``). Beside it, ``<out>.json`` (``m.onnx.json``,
``m.xml.json``) records the
preprocessing, the thresholds and the recipe with each value's source. Unless
``--no-check``, onnxruntime runs the file on random images and it must agree with the
Scorer within 1e-4 (onnxruntime for ONNX; OpenVINO's CPU plugin in float32 for IR).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._args import EXIT_OK, EXIT_USAGE, UsageError, check_out_dir, examples, positive_int
from .recipe_flags import add_recipe_flags, resolve_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "exit codes: 0 ok; 2 bad arguments, model, missing export packages or a failed export / check\n\n" + (
        examples(
            "igd-fast export --model runs/bottle --format onnx --out deploy/bottle.onnx",
            "igd-fast export --model runs/bottle --format openvino --out deploy/bottle.xml",
            "pip install 'igd_fast[export]'   # onnx, onnxscript, onnxruntime (and openvino for --format openvino)",
        )
    )
    p.add_argument("--model", required=True, metavar="DIR",
                   help="trained model directory (global.pt, local.pt and/or defect.pt)")
    p.add_argument("--format", default="onnx", choices=("onnx", "openvino"), help="export format (default onnx)")
    p.add_argument("--out", "--output", dest="out", required=True, metavar="PATH",
                   help="file to write (a folder: PATH/model.onnx or .xml); its <name>.json beside it")  # fmt: skip
    p.add_argument("--opset", type=_opset, default=None,
                   help="ONNX opset, 18 or newer (default 18; the file's JSON records the opset written)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against the Scorer")
    p.add_argument("--check-batch", type=_check_batch, default=2,
                   help="images in the parity check (default 2; at most 64, raise with IGD_FAST_MAX_CHECK_BATCH)")
    add_recipe_flags(p, network=False)


def _opset(text: str) -> int:
    from ..export.onnx import MIN_OPSET

    v = positive_int(text)
    try:
        import onnx

        newest = int(onnx.defs.onnx_opset_version())
    except ImportError:  # reported with the other missing packages
        newest = None
    if v < MIN_OPSET or (newest is not None and v > newest):
        span = f"{MIN_OPSET}..{newest}" if newest is not None else f"{MIN_OPSET} or newer"
        raise argparse.ArgumentTypeError(f"opset {v} cannot be written: the exporter writes opsets {span} "
                                         "(this onnx package's newest is the upper end)")  # fmt: skip
    return v


def _check_batch(text: str) -> int:
    from ..limits import LimitError, check_batch

    v = positive_int(text)
    try:
        return check_batch(v, "--check-batch")
    except LimitError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--check-batch ")) from None


def _target(out: str, fmt: str) -> Path:
    p = Path(out)
    if p.is_dir() or out.endswith(("/", "\\")):
        check_out_dir(p)
        return p / ("model.xml" if fmt == "openvino" else "model.onnx")
    check_out_dir(p.parent, "--out's folder")
    return p.with_suffix(".xml") if fmt == "openvino" else p


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointError
    from ..export import DEFAULT_OPSET, ExportError, export_onnx, export_openvino, missing_packages
    from ..export.onnx import record_path

    try:
        recipe = resolve_recipe(args)
        out = _target(args.out, args.format)
        missing = missing_packages(not args.no_check, args.format)
        if missing:
            extra = "openvino" if args.format == "openvino" else "export"
            raise UsageError(f"--format {args.format} needs {', '.join(missing)}: pip install 'igd_fast[{extra}]'")
        export = export_openvino if args.format == "openvino" else export_onnx
        try:
            rec = export(args.model, out, args.opset or DEFAULT_OPSET, not args.no_check, args.check_batch, recipe)
        except (CheckpointError, FileNotFoundError) as e:
            raise UsageError(f"--model {args.model}: {e}") from None
        except (OSError, ValueError, KeyError) as e:  # e.g. no validation images to calibrate on
            raise UsageError(f"--model {args.model}: cannot calibrate the threshold the export embeds: {e}") from None
    except UsageError as e:
        print(f"igd-fast export: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ExportError as e:
        print(f"igd-fast export: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({k: rec.get(k) for k in ("file", "outputs", "threshold", "max_abs_diff")}))
    print(f"wrote {out} and {record_path(out)}", file=sys.stderr)
    return EXIT_OK
