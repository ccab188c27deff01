"""The one rule for listing input files (folders searched recursively, glob patterns)
and for what may be opened as one.

* Hidden files and folders (a name starting with '.') are skipped.
* A symlinked folder is followed, but no folder is entered twice: a symlink loop or two
  links to the same folder cannot list a file twice or never end.
* Folders passed as ``exclude`` (the run's own ``--out``) and folders an igd-fast run
  wrote its outputs to (they hold ``.igd-fast.lock``) are skipped, so a second run never
  scores the first one's overlays.
* Only regular files are opened (a FIFO or a device named as an input would block or
  never end): :func:`regular_file`.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..outputs import is_output_folder

MAGIC = re.compile(r"[*?[]")


class NotARegularFile(ValueError):
    """A path that exists but is not a regular file (FIFO, device, socket, folder)."""


def regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` when it is a regular file (symlinks followed); FileNotFoundError when it
    does not exist, :class:`NotARegularFile` when it is something else."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {p} does not exist") from None
    except OSError as e:
        raise FileNotFoundError(f"{what} {p} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")  # fmt: skip
        raise NotARegularFile(f"{what} {p} is {kind}; only regular files are read")
    return p


def _real(paths: Iterable[str | Path]) -> set[str]:
    return {os.path.realpath(p) for p in paths if p is not None and str(p) != ""}


def walk_files(root: str | Path, exclude: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Regular files below ``root`` (recursively, by the rules of the module doc), in
    no particular order."""
    skip = _real(exclude)
    seen: set[tuple[int, int]] = set()
    stack = [Path(root)]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    if os.path.realpath(e.path) not in skip and not is_output_folder(e.path):
                        stack.append(Path(e.path))
                elif e.is_file():
                    yield Path(e.path)
            except OSError:
                continue


def _component_regex(c: str) -> str:
    """One path component of a glob pattern as a regex ('*' and '?' stay in the component)."""
    out, i = [], 0
    while i < len(c):
        ch = c[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (j := c.find("]", i + 2 if c[i + 1 : i + 2] in ("!", "]") else i + 1)) != -1:
            body = c[i + 1 : j]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def glob_files(pattern: str, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Regular files matching ``pattern`` (``**`` = any number of folders), sorted. A
    ``**`` pattern walks its folder by :func:`walk_files` (loop-safe, hidden and output
    folders skipped); a pattern without one has a fixed depth and is matched by
    :func:`glob.glob`."""
    skip = _real(exclude)

    def keep(p: Path) -> bool:
        real = os.path.realpath(p)
        return p.is_file() and not any(real.startswith(s.rstrip(os.sep) + os.sep) for s in skip)

    parts = pattern.replace("\\", "/").split("/")
    if "**" not in parts:
        return sorted(p for p in (Path(f) for f in glob.glob(pattern)) if keep(p))
    first = next(i for i, c in enumerate(parts) if MAGIC.search(c))
    base = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
    rest = parts[first:]
    rx = ""
    for i, c in enumerate(rest):
        last = i == len(rest) - 1
        if c == "**":
            rx += ".*" if last else "(?:[^/]+/)*"
        else:
            rx += _component_regex(c) + ("" if last else "/")
    match = re.compile(rx + r"\Z").match
    found = []
    for f in walk_files(base, exclude):
        rel = os.path.relpath(f, base).replace(os.sep, "/")
        if match(rel) and keep(f):
            found.append(Path(os.path.join(base, rel)) if base != "." else Path(rel))
    return sorted(found)
