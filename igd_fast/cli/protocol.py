"""``igd-fast protocol``: the paper's one-class protocols, end to end, class by class."""

from __future__ import annotations

import argparse
import sys

from ..models.config import LR_SCHEDULES

EPILOG = """\
mnist: the 10,000-image t10k set (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz
in --data). Every class is split once, 50/50, into a training and a test pool by a
permutation from numpy default_rng(SEED); normal class K trains on (a --train-fraction
of) its training pool plus round_half_up(R * n_train) anomalies drawn from the other
classes' training pools (--contamination R), and is tested on the test pools of all ten
classes. 28x28 digits are resized to 32x32 (bilinear); MS-SSIM uses the LOCAL config
(3x3 window, 4 scales).
mvtec: ROOT/CATEGORY in the MVTec layout; --train-fraction subsamples train/good,
--contamination moves round_half_up(R * n_train) anomalous test images into training
(removed from the test set). Paper model defaults (256², ResNet-18, 256 epochs).

One global model per class, scored by s_G = l_r + l_h. Writes OUT/results.json (per
class image_AUROC, the mean, settings, seed, seconds) and OUT/results.md, and per class
OUT/<class>/{data,model,scores.csv}. Rerunning with the same settings resumes: classes
already in results.json are not redone.

examples:
  igd-fast protocol mnist --data ../shared/data/mnist --normal-class all --variant igd --out runs/mnist
  igd-fast protocol mnist --data ../shared/data/mnist --normal-class 3 --train-fraction 0.2 --out runs/m3
  igd-fast protocol mvtec --data /data/mvtec --category bottle,screw --contamination 0.05 --out runs/mv
"""

WORKERS = {"mnist": 0, "mvtec": 4}  # 28² PNGs decode faster in-process than via workers


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..protocol import VARIANTS

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("dataset", choices=("mnist", "mvtec"), help="which protocol")
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="ROOT", help="MNIST idx folder, or the MVTec-layout root")
    g.add_argument("--normal-class", default=None, metavar="K|all", help="mnist: normal digit 0-9 or all (default)")
    g.add_argument("--category", default=None, metavar="C[,C...]", help="mvtec: category folder(s) under ROOT")
    g.add_argument("--train-fraction", type=float, default=1.0, help="keep this fraction of the normals (Tab. 6)")
    g.add_argument("--contamination", type=float, default=0.0, help="anomalies added per training normal (Tab. 7)")
    g.add_argument(
        "--dev",
        action="store_true",
        help="mnist: the development split (each training pool split again 70/30; no test pool is read): "
        "choose settings with it, then run without --dev once",
    )
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: mnist 0, mvtec 4)")
    g.add_argument("--jobs", type=int, default=1,
                   help="classes trained at the same time, each in its own process with cpu_count/JOBS threads "
                        "(default 1); on 2 cores --jobs 2 runs the ten MNIST classes about twice as fast, as one "
                        "small model does not keep two threads busy")  # fmt: skip
    m = p.add_argument_group("model (defaults per dataset: igd_fast.protocol.DATASET_DEFAULTS)")
    m.add_argument("--variant", default="igd", choices=VARIANTS, help="training variant (default igd)")
    m.add_argument("--image-size", type=int, default=None, help="model input size (mnist 32, mvtec 256)")
    m.add_argument("--width", type=int, default=None, help="encoder base width (mnist 16, mvtec 64)")
    m.add_argument("--blocks", type=int, nargs=4, default=None, metavar="N", help="BasicBlocks per stage")
    m.add_argument("--latent", type=int, default=None, help="latent dimension Z (mnist 32, mvtec 128)")
    m.add_argument("--win-size", type=int, default=None, help="MS-SSIM window (mnist 3, mvtec 11)")
    m.add_argument("--weights", type=float, nargs="+", default=None, metavar="W", help="MS-SSIM scale weights")
    m.add_argument("--lr", type=float, default=None, help="Adam learning rate (mnist 3e-4, mvtec 1e-4)")
    m.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="constant or cosine, as igd-fast train --lr-schedule (mnist cosine, mvtec constant)")
    m.add_argument("--estep-every", type=int, default=None, help="E-step every N epochs (mnist 5, mvtec 10)")
    m.add_argument("--sigma2-floor", type=float, default=None,
                   help="E-step sigma^2 = max(mean ||z - mu||^2, this) (mnist 1 as the published code, mvtec 0 = SPEC)")
    m.add_argument("--latent-weight", type=float, default=None,
                   help="score = l_r + this * l_h (1 = the paper's s_G; as igd-fast score --latent-weight)")
    t = p.add_argument_group("training")
    t.add_argument("--out", required=True, metavar="DIR", help="results folder (resumed when it exists)")
    t.add_argument("--epochs", type=int, default=None, help="epochs per class (mnist 150, mvtec 256)")
    t.add_argument("--batch-size", type=int, default=None, help="images per batch (mnist 16, mvtec 16)")
    t.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _classes(args: argparse.Namespace) -> list[str]:
    if args.dataset == "mnist":
        if args.category is not None:
            raise ValueError("--category is for mvtec; mnist takes --normal-class K|all")
        k = args.normal_class or "all"
        if k == "all":
            return [str(i) for i in range(10)]
        if not (k.isdigit() and 0 <= int(k) <= 9):
            raise ValueError(f"--normal-class must be a digit 0-9 or all, got {k!r}")
        return [str(int(k))]
    if args.normal_class is not None:
        raise ValueError("--normal-class is for mnist; mvtec takes --category C[,C...]")
    if not args.category:
        raise ValueError("mvtec needs --category C[,C...]")
    cats = [c for c in args.category.split(",") if c]
    if len(set(cats)) != len(cats) or not cats:
        raise ValueError(f"--category lists a category twice or none: {args.category!r}")
    return cats


def _settings(args: argparse.Namespace):
    from ..protocol import ProtocolSettings

    return ProtocolSettings.for_dataset(
        args.dataset, args.data, _classes(args), variant=args.variant, train_fraction=args.train_fraction,
        contamination=args.contamination, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
        image_size=args.image_size, width=args.width, blocks=None if args.blocks is None else tuple(args.blocks),
        latent=args.latent, win_size=args.win_size, weights=None if args.weights is None else tuple(args.weights),
        lr=args.lr, lr_schedule=args.lr_schedule, estep_every=args.estep_every, sigma2_floor=args.sigma2_floor,
        latent_weight=args.latent_weight, dev=args.dev or None,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from concurrent.futures.process import BrokenProcessPool

    from ..checkpoint import CheckpointError
    from ..data import CorruptImageError, DataLayoutError
    from ..protocol import Protocol
    from ..train import NonFiniteLossError, sigterm_as_interrupt

    workers = WORKERS[args.dataset] if args.workers is None else args.workers
    try:
        if workers < 0:
            raise ValueError(f"--workers must be >= 0, got {workers}")
        settings = _settings(args)
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        # one progress bar per process would interleave: none with parallel jobs
        proto = Protocol(settings, args.out, device, workers, not args.no_progress and args.jobs == 1, jobs=args.jobs)
        with sigterm_as_interrupt():
            res = proto.run()
    except KeyboardInterrupt:
        print(
            f"igd-fast protocol: interrupted; finished classes are kept in {args.out}/results.json, "
            f"the same command resumes from there",
            file=sys.stderr,
        )
        return 2
    except BrokenProcessPool as e:
        print(f"igd-fast protocol: error: a --jobs worker process died ({e}); out of memory? finished classes "
              f"are kept in {args.out}/results.json", file=sys.stderr)  # fmt: skip
        return 2
    except (DataLayoutError, CorruptImageError, NonFiniteLossError, CheckpointError, FileNotFoundError,
            ValueError) as e:  # fmt: skip
        print(f"igd-fast protocol: error: {e}", file=sys.stderr)
        return 2
    mean = res["mean_image_AUROC"]
    tail = f"mean image AUROC {mean:.4f}, " if mean is not None else ""
    wall = f", {res['wall_seconds']:.0f} s wall with {res['jobs']} job(s)" if res.get("jobs", 1) > 1 else ""
    print(f"{tail}{res['total_seconds']:.0f} s{wall}; wrote {args.out}/results.json and results.md")
    return 0
