"""An append-only on-disk cache of paid-for answers (judgments, completions), safe to kill at any time.

One JSON object per line: {"key": ..., "value": ...}. Each `put` appends a line and fsyncs it, so a run
that is interrupted (Ctrl-C, a judge that stops answering, a power cut) keeps everything finished before
it; a torn last line is skipped when the file is read back. Keys are hashes of everything that decides
the answer (see `key`), so a changed model, prompt, judge or template never reuses a stale answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import UserError

RECORD_START = b'{"key": "'  # how json.dumps({"key": ..., ...}) begins: the mark of our files


def key(*parts: Any) -> str:
    """A stable hash of JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    """$TINYSTORIES_CACHE, else $XDG_CACHE_HOME/tinystories, else ~/.cache/tinystories."""
    env = os.environ.get("TINYSTORIES_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinystories"


class JsonlCache:
    """key -> JSON value, loaded into memory at start, appended to on each `put`. Thread-safe.

    `path=None` is a cache that remembers nothing (for --no-cache).
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self._torn = False     # the file ends mid-line: start the next record on a new line
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self._check_ours()
                with open(self.path, "r", encoding="utf-8", errors="replace") as f:
                    for line in f:
                        self._torn = not line.endswith("\n")
                        try:
                            rec = json.loads(line)
                            self._data[rec["key"]] = rec["value"]
                        except (ValueError, KeyError, TypeError):
                            continue  # a line torn by a kill mid-write
        except OSError as e:
            raise UserError(f"--cache {self.path}: cannot use it ({e.strerror}); pass another --cache") from None

    def _check_ours(self) -> None:
        """Refuse a file this class did not write (weights, a report, a story file given as --cache by
        mistake): appending to it would damage it. Every record starts with the same bytes, so the
        first ones tell, even when a kill tore the first record."""
        with open(self.path, "rb") as f:
            head = f.read(len(RECORD_START))
        if head and not RECORD_START.startswith(head) and not head.startswith(RECORD_START):
            raise UserError(f"--cache {self.path}: not a tinystories cache (it does not start with "
                            f"{RECORD_START.decode()}); pass another --cache, or --no-cache")

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, k: str) -> bool:
        return k in self._data

    def get(self, k: str, default: Any = None) -> Any:
        with self._lock:
            if k in self._data:
                self.hits += 1
                return self._data[k]
        return default

    def put(self, k: str, value: Any) -> None:
        line = json.dumps({"key": k, "value": value}, ensure_ascii=False) + "\n"
        with self._lock:
            self._data[k] = value
            if self.path is None:
                return
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if self._torn else "") + line)
                self._torn = False
                f.flush()
                os.fsync(f.fileno())
