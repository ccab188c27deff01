"""Reader (and writer) of the MNIST idx format, gzip'd or plain.

An idx file is a 4-byte magic ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the values row-major. MNIST images are ``0x00000803`` (uint8, 3-D:
N×28×28), labels ``0x00000801`` (uint8, 1-D: N). Every malformed file raises
:class:`IdxFormatError` naming the file.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# idx dtype codes -> big-endian numpy dtypes
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
MNIST_FILES = {
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
}


class IdxFormatError(ValueError):
    """An idx file is missing, truncated or not what it should be; names the file."""


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise IdxFormatError(f"idx file {path} does not exist")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise IdxFormatError(f"cannot read idx file {path}: {e}") from e


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """The array stored in an idx file (``.gz`` is decompressed). ``expect_magic``
    (e.g. :data:`IMAGES_MAGIC`) also checks the dtype code and number of dimensions."""
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise IdxFormatError(f"idx file {path} is {len(buf)} bytes, too short for the magic number")
    magic = struct.unpack(">I", buf[:4])[0]
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or code not in IDX_DTYPES or ndim == 0:
        raise IdxFormatError(f"idx file {path}: bad magic number 0x{magic:08x}")
    if expect_magic is not None and magic != expect_magic:
        raise IdxFormatError(f"idx file {path}: magic number 0x{magic:08x}, expected 0x{expect_magic:08x}")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IdxFormatError(f"idx file {path} is truncated inside its {ndim}-dimension header")
    shape = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(buf) - header
    if got != want:
        raise IdxFormatError(
            f"idx file {path}: header says shape {tuple(shape)} ({want} data bytes), the file holds {got}"
        )
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an idx file (gzip'd when ``path`` ends in ``.gz``)."""
    path = Path(path)
    a = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    code = codes.get(a.dtype.newbyteorder("="))
    if code is None or a.ndim == 0 or a.ndim > 255:
        raise ValueError(f"cannot store dtype {a.dtype} with {a.ndim} dimensions in idx")
    data = struct.pack(">I", (code << 8) | a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    data += a.astype(IDX_DTYPES[code]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def load_mnist(root: str | Path, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28 uint8, labels N uint8) of ``root``'s ``t10k`` or ``train`` files,
    checked for magic numbers, matching counts and labels in 0..9."""
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    img_name, lab_name = MNIST_FILES[split]
    img_path, lab_path = Path(root) / img_name, Path(root) / lab_name
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lab_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise IdxFormatError(f"idx file {img_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise IdxFormatError(f"{img_path} holds {len(images)} images but {lab_path} {len(labels)} labels")
    if labels.size and int(labels.max()) > 9:
        raise IdxFormatError(f"idx file {lab_path}: label {int(labels.max())} outside 0..9")
    return images, labels
