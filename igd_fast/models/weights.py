"""Reading weight files (checkpoints, pretrained encoders, torchvision state_dicts)
with ``torch.load(weights_only=True)``: no pickled code runs, and every failure is one
error naming the file and saying what is wrong with it."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..data.files import NotARegularFile, regular_file


def load_weights(path: str | Path, what: str, error: type[Exception] = ValueError, map_location="cpu"):
    """The object stored in ``path`` (a regular file); ``error`` naming the file (as
    ``what``) when it is missing, not a regular file, pickled Python objects (refused,
    never run), truncated, corrupt or not a torch file."""
    p = Path(path)
    try:
        regular_file(p, what)
    except (NotARegularFile, FileNotFoundError) as e:
        raise error(str(e)) from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says more
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(p, map_location=map_location, weights_only=True)
    # random bytes can make the unpickler raise almost anything (IndexError, KeyError,
    # struct.error, UnpicklingError, ...): every failure of the load is a file we cannot read
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        # torch words it "Unsupported global" or "unsupported GLOBAL" depending on the version;
        # a plain pickle (not torch.save) trips the same unpickler on an opcode
        why = next((ln for ln in lines if "unsupported global" in ln.lower()), None)
        if why is None and "weightsunpickler error" in msg.lower() and _pickle_header(p):
            why = next((ln for ln in lines if "unsupported" in ln.lower()), "WeightsUnpickler error")
        if why is not None:
            why = why.split("WeightsUnpickler error:")[-1].split(". Please")[0].strip()
            raise error(f"refusing {what} {p}: it holds pickled Python objects, which a weights_only load never "
                        f"runs ({why[:160]})") from e  # fmt: skip
        keep = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))]
        first = keep[-1][:200] if keep else type(e).__name__
        raise error(f"cannot read {what} {p}: corrupt, truncated or not a {what} ({first})") from e


def _pickle_header(p: Path) -> bool:
    """True when the file starts as a pickle does (PROTO opcode, protocol 2-5): random
    bytes trip the same unpickler errors, but are not pickled objects."""
    try:
        with open(p, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
