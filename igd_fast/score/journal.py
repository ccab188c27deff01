"""What a scoring run has finished so far, kept in its output folder so that a rerun into the
same folder skips those images (resume after an interruption, or score only the images added
to a folder since).

``OUT/.igd-fast-scored/``: ``key.json`` (what the rows were scored with: the model files, the
decision, the scoring recipe and the files asked for) and ``part-*.jsonl``, the rows in parts
of a few hundred, each part written atomically (a killed run loses at most the part it was
filling). A rerun with another key starts afresh: rows of another model or threshold are
never mixed into one ``scores.csv``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from ..outputs import inside, write_json, write_text

FOLDER = ".igd-fast-scored"
KEY = "key.json"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class Journal:
    """The rows of one output folder's earlier runs with the same ``key`` (a JSON-able dict);
    :meth:`add` appends this run's rows, written every ``every_rows`` rows or
    ``every_seconds`` seconds, and on :meth:`flush`."""

    def __init__(self, out: str | Path, key: dict, every_rows: int = 256, every_seconds: float = 10.0) -> None:
        self.folder = inside(Path(out), FOLDER)
        self.key = json.loads(_canonical(key))
        self.every_rows, self.every_seconds = every_rows, every_seconds
        self.stale = False  # an earlier run's rows were dropped: another key
        self._pending: list[dict] = []
        self._last = time.monotonic()
        self._run = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        self._parts = 0

    def rows(self) -> dict[str, dict]:
        """The rows already scored with this key, by input path (none when the folder holds
        another run's: those parts are removed, so they cannot come back)."""
        key_file = self.folder / KEY
        if not key_file.is_file():
            return {}
        try:
            same = _canonical(json.loads(key_file.read_text())) == _canonical(self.key)
        except (OSError, ValueError):
            same = False
        if not same:
            self.stale = True
            for p in self.folder.glob("part-*.jsonl"):
                os.unlink(p)
            return {}
        done: dict[str, dict] = {}
        for p in sorted(self.folder.glob("part-*.jsonl")):
            for line in p.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    done[row["path"]] = row
        return done

    def add(self, rows: list[dict]) -> None:
        self._pending += [{k: v for k, v in r.items() if k != "index"} for r in rows]
        if len(self._pending) >= self.every_rows or time.monotonic() - self._last >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._pending:
            return
        self.folder.mkdir(exist_ok=True)
        if self._parts == 0:
            write_json(self.folder / KEY, self.key)
        self._parts += 1
        text = "".join(json.dumps(r) + "\n" for r in self._pending)
        write_text(self.folder / f"part-{self._run}-{self._parts:06d}.jsonl", text)
        self._pending = []
