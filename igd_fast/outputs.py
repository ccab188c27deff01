"""Writing what the package produces: every file atomically, inside its output folder,
one run per output folder.

* :func:`atomic_write_bytes` (and :func:`write_text`, :func:`write_json`,
  :func:`save_image`, :func:`save_npy`): the file is written under no name (Linux
  ``O_TMPFILE``; elsewhere a hidden temp file named after the target and this process),
  then given its name by a rename, so a reader, a crash or a SIGKILL sees the old file
  or the new one, never half of one, and a killed writer leaves no debris (a named temp
  file of a dead process is removed by the next write of that file and by
  :func:`sweep_temp`). Files get the usual ``0666 & ~umask`` mode, as ``open`` gives.
  Failures raise :class:`OutputError` naming the file (full disk, read-only, ...).
* :func:`inside`: a path built from parts (category names, input names) that must stay
  inside its output folder; :class:`OutputPathError` otherwise.
* :func:`output_lock`: an exclusive lock on an output folder (``.igd-fast.lock``, also
  the marker by which input listings skip our own output folders); a second run into
  the same folder is refused with :class:`FolderInUse`.

Only the standard library: every layer may import this module.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".igd-tmp"
LOCK_NAME = ".igd-fast.lock"
# errors after which writing anything else to the same place fails too: stop, do not skip
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class OutputError(OSError):
    """A file that could not be written; the message names it and says why."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror or 'write failed'}"

    @property
    def fatal(self) -> bool:
        """Full disk, quota, read-only file system: every later write would fail as well."""
        return self.errno in FATAL_WRITE_ERRNOS


class OutputPathError(ValueError):
    """An output path that would land outside its output folder."""


class FolderInUse(RuntimeError):
    """Another run holds the output folder's lock."""


# ---------------------------------------------------------------- atomic files


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _stale(name: str) -> bool:
    """A temp file name of ours whose writer process is gone."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return False
    parts = name[: -len(TEMP_SUFFIX)].split(".")
    try:
        pid = int(parts[-2])
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and not _pid_alive(pid)


def sweep_temp(folder: str | Path, recursive: bool = True) -> int:
    """Remove the temp files that killed writers left below ``folder``; how many."""
    n = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for d, _, files in walker:
        for name in files:
            if _stale(name):
                try:
                    os.unlink(os.path.join(d, name))
                    n += 1
                except OSError:
                    pass
    return n


def _sweep_siblings(path: Path) -> None:
    prefix = f".{path.name}."
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and _stale(n)]
    except OSError:
        return
    for n in names:
        try:
            os.unlink(path.parent / n)
        except OSError:
            pass


# devices where an unnamed file cannot be given a name (linkat through /proc fails,
# e.g. EXDEV under some sandboxes): named temp files from the start there
_NO_LINK: set[int] = set()


def _open_unnamed(folder: Path) -> int | None:
    """A file descriptor of a new file without a name in ``folder`` (O_TMPFILE), or None
    where the system or file system has none."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        if os.stat(folder).st_dev in _NO_LINK:
            return None
        return os.open(folder, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


def _name_unnamed(f, path: Path) -> Path:
    """Give the unnamed file ``f`` a temp name beside ``path``; where that is impossible,
    copy its bytes into a named temp file (once per device: later writes go named)."""
    tmp = _temp_name(path)
    try:
        os.link(f"/proc/self/fd/{f.fileno()}", tmp, follow_symlinks=True)
        return tmp
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
            raise
        _NO_LINK.add(os.fstat(f.fileno()).st_dev)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as g:
            f.seek(0)
            while block := f.read(1 << 20):
                g.write(block)
            g.flush()
            os.fsync(g.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


class _Guarded:
    """A file object that remembers the OSError of a failed write: some writers (torch's
    zip writer) replace it with an error of their own while unwinding."""

    def __init__(self, f) -> None:
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def atomic_write_bytes(path: str | Path, write: Callable, durable: bool = True) -> None:
    """Call ``write(file_object)`` on a new file and give it the name ``path`` only when
    complete (see the module doc). ``durable``: fsync before the rename, so the new file
    also survives a power cut (checkpoints); without it the write is still atomic for
    every reader and against a killed process. Raises :class:`OutputError` naming ``path``."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_siblings(path)
        fd = _open_unnamed(path.parent)
        if fd is None:
            tmp = _temp_name(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        unnamed = tmp is None
        with os.fdopen(fd, "w+b" if unnamed else "wb") as f:
            guarded = _Guarded(f)
            try:
                write(guarded)
            except Exception as e:
                if guarded.error is not None and not isinstance(e, OSError):  # the real cause: a full disk, ...
                    raise guarded.error from e
                raise
            f.flush()
            if durable:
                os.fsync(f.fileno())
            if unnamed:
                tmp = _name_unnamed(f, path)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """For writers that need a file name (exporters): a temp path beside ``path``,
    renamed over ``path`` when the block ends without error and removed otherwise."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(e.errno, e.strerror, str(path.parent)) from e
    _sweep_siblings(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        if tmp.exists():
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_text(path: str | Path, text: str, durable: bool = False) -> None:
    data = text.encode()
    atomic_write_bytes(path, lambda f: f.write(data), durable)


def strict_json(obj) -> str:
    """``obj`` as strict JSON (RFC 8259, what ``jq`` and other parsers accept): a non-finite
    float (the exported runtimes' NaN ``s_global`` / ``s_local``) written as null, not NaN."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(u) for u in v]
        return v

    return json.dumps(clean(obj), allow_nan=False)


def write_json(path: str | Path, obj, durable: bool = False, **kw) -> None:
    write_text(path, json.dumps(obj, **{"indent": 2, **kw}), durable)


def save_image(path: str | Path, image, format: str = "PNG", durable: bool = False, **kw) -> None:
    """A PIL image (or an array, via ``Image.fromarray``) written atomically."""
    from PIL import Image

    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()  # encoded first: a failing encoder leaves nothing behind
    im.save(buf, format=format, **kw)
    data = buf.getvalue()
    atomic_write_bytes(path, lambda f: f.write(data), durable)


def save_npy(path: str | Path, array, durable: bool = False) -> None:
    import numpy as np

    atomic_write_bytes(path, lambda f: np.save(f, array), durable)


# ---------------------------------------------------------------- paths


def inside(folder: str | Path, *parts: str | Path, what: str = "--out") -> Path:
    """``folder/parts...``, checked to stay inside ``folder`` once every ``..`` and
    symlink is resolved (OutputPathError naming the escaping part otherwise)."""
    base = Path(folder)
    p = base.joinpath(*parts)
    real_base = os.path.realpath(base)
    real = os.path.realpath(p)
    if real != real_base and not real.startswith(real_base.rstrip(os.sep) + os.sep):
        rel = Path(*parts).as_posix() if parts else str(p)
        raise OutputPathError(f"{rel!r} would be written to {real}, outside {what} {base}")
    return p


def plain_name(name: str, flag: str) -> str:
    """``name`` as one folder name (trailing separators dropped); ValueError naming
    ``flag`` for a path (separators), '.', '..' or an empty name."""
    n = str(name).rstrip("/\\")
    if n in ("", ".", "..") or "/" in n or "\\" in n or "\0" in n:
        raise ValueError(f"{flag} {name!r} must be a plain folder name (no '/', not '.' or '..')")
    return n


# ---------------------------------------------------------------- one run per folder


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 400).decode(errors="replace").strip()
    except OSError:
        return ""


@contextmanager
def output_lock(folder: str | Path, what: str = "--out") -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; :class:`FolderInUse` (naming the other
    run's process) when another run holds it. The lock dies with its process, so a
    killed run never leaves the folder locked. Temp files killed writers left below
    the folder are removed once the lock is held."""
    folder = Path(folder)
    p = folder / LOCK_NAME
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise OutputError(e.errno, e.strerror, str(p)) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            raise FolderInUse(f"{what} {folder} is in use by another igd-fast run ({who or 'unknown process'}); "
                              f"wait for it to finish or choose another {what}") from None  # fmt: skip
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}\n".encode())
        except OSError:
            pass  # a full disk: the lock itself still holds
        sweep_temp(folder)
        yield folder
    finally:
        os.close(fd)


def is_output_folder(folder: str | Path) -> bool:
    """True for a folder some igd-fast run wrote its outputs to (it holds the lock file)."""
    return (Path(folder) / LOCK_NAME).is_file()
