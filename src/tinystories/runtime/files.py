"""Atomic files and directories: a reader, or a crash, sees the old file or the new one, never half.

Temporary siblings are named `.NAME.PID.XXXXXXXX.tmp` (PID: the writing process), so the next write
to NAME, or `tinystories clean`, can tell a killed writer's leftovers (PID gone) from a live one's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

# ---------------------------------------------------------------- atomic writes

RUN_MARKER = "train_config.json"   # a run directory (train/config.py's CONFIG_FILE): only train replaces one
CHECKPOINTS = "checkpoints"


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees the old file or the new one, never half."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name")
    remove_stale_siblings(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: the file gets the mode a plain open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False, option: str = "--out") -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it into place when the block succeeds.

    If the block raises (or the process is killed), `path` is untouched: no half-written output, and
    the next atomic_dir on `path` removes the killed run's temporary sibling.
    An existing `path` is an error unless `force`, in which case it is replaced only at the end.
    `force` never replaces a regular file, nor a training run (its checkpoints) with anything but a run.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, not a directory; pick another path")
    if path.exists() and not force:
        raise UserError(f"{option} {path} already exists; pass --force to replace it")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{option} {path}: {path.parent} is a file, not a directory; pick another path")
    made = _make_parents(path)
    remove_stale_siblings(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: the directory gets the mode mkdir would give
        yield tmp
        if (path / CHECKPOINTS).is_dir() and not (tmp / RUN_MARKER).is_file():
            raise UserError(f"{option} {path}: is a training run (it has {CHECKPOINTS}/); --force replaces it "
                            f"only with another run; pick another path")
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f"{_tmp_prefix(path)}old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # a failed run leaves no trace, not even the directories it made for its output
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _make_parents(path: Path) -> list[Path]:
    """mkdir -p path.parent; returns the directories it created, deepest first."""
    made = []
    d = path.parent
    while not d.exists():
        made.append(d)
        d = d.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return made


# ---------------------------------------------------------------- outputs apart from inputs

def check_apart(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], option: str = "--out") -> None:
    """UserError if `out` is, contains, or lies inside one of `inputs` (those that exist on disk).

    A verb that replaces its output would otherwise destroy what it reads (`--out` equal to an input
    with `--force`, or a directory holding one). Symbolic links are followed.
    """
    o = Path(out).expanduser().resolve()
    for inp in inputs:
        if inp is None:
            continue
        p = Path(inp).expanduser()
        if not p.exists():
            continue
        i = p.resolve()
        if o == i:
            why = "is"
        elif o in i.parents:
            why = "contains"
        elif i in o.parents:
            why = "lies inside"
        else:
            continue
        raise UserError(f"{option} {out}: {why} the input {inp}; writing there would destroy it, pick another path")


# ---------------------------------------------------------------- leftovers of killed writers

# .NAME.PID.XXXXXXXX.tmp and .NAME.PID.old (this module), .NAME.XXXXXXXX.tmp and .NAME.old (earlier
# versions, and tempfile callers elsewhere), .step-N.trash (a checkpoint being pruned).
_TMP = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?(?P<rand>[a-z0-9_]{8})\.tmp$")
_OLD = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?old$")
_TRASH = re.compile(r"^\.(?P<name>step-\d+)\.trash$")
LEGACY_AGE_S = 3600.0  # a leftover without a PID is stale once nothing in it changed for this long


@dataclass
class Leftover:
    path: Path
    bytes: int
    action: str   # "removed" | "restored" (an interrupted swap: the previous output put back)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _newest_mtime(p: Path) -> float:
    try:
        t = p.lstat().st_mtime
        if p.is_dir() and not p.is_symlink():
            for q in p.iterdir():
                with contextlib.suppress(OSError):
                    t = max(t, q.lstat().st_mtime)
        return t
    except OSError:
        return time.time()


def _stale(entry: Path, m: re.Match, now: float) -> bool:
    pid = m.groupdict().get("pid")
    if pid is not None:
        return not _pid_alive(int(pid))
    return now - _newest_mtime(entry) > LEGACY_AGE_S


def _size(p: Path) -> int:
    if p.is_symlink() or not p.is_dir():
        with contextlib.suppress(OSError):
            return p.lstat().st_size
        return 0
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def find_leftovers(directory: Path, only_name: str | None = None, now: float | None = None
                   ) -> list[tuple[Path, str]]:
    """Stale leftovers directly in `directory` (of `only_name`'s writes, or of any): (path, "remove" | "restore")."""
    now = time.time() if now is None else now
    found: list[tuple[Path, str]] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return found
    for entry in entries:
        n = entry.name
        if not n.startswith("."):
            continue
        for pattern in (_TMP, _OLD, _TRASH):
            m = pattern.match(n)
            if m is None or (only_name is not None and m["name"] != only_name):
                continue
            if pattern is _TRASH:
                found.append((entry, "remove"))  # always garbage: it was being deleted
            elif _stale(entry, m, now):
                # An .old whose NAME is gone: killed between the two renames of a swap; put it back.
                restore = pattern is _OLD and not (directory / m["name"]).exists()
                found.append((entry, "restore" if restore else "remove"))
            break
    return found


def _apply(entry: Path, action: str, dry_run: bool = False) -> Leftover:
    size = _size(entry)
    m = _OLD.match(entry.name)
    if not dry_run:
        if action == "restore" and m is not None:
            os.replace(entry, entry.with_name(m["name"]))
        else:
            _remove(entry)
    return Leftover(entry, size, "restored" if action == "restore" else "removed")


def remove_stale_siblings(path: str | os.PathLike) -> list[Leftover]:
    """Remove what killed writers of `path` left beside it (their PID is gone). Live writers' files stay."""
    path = Path(path)
    return [_apply(e, a) for e, a in find_leftovers(path.parent, only_name=path.name)]


def clean(paths: Iterable[str | os.PathLike], dry_run: bool = False) -> list[Leftover]:
    """`tinystories clean`: remove the leftovers of killed writers under each path (recursively).

    Only names this package makes are touched (see the patterns above), and only stale ones: a
    PID that is gone, or, without a PID, nothing changed for an hour. Never a file the user made.
    """
    out: list[Leftover] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
        dirs = [p.parent] if not p.is_dir() else []
        if p.is_dir():
            for root, subdirs, _ in os.walk(p):
                leftovers = find_leftovers(Path(root))
                out.extend(_apply(e, a, dry_run) for e, a in leftovers)
                gone = {e.name for e, _ in leftovers}
                subdirs[:] = [d for d in subdirs if d not in gone]  # do not walk into what was removed
        for d in dirs:
            out.extend(_apply(e, a, dry_run) for e, a in find_leftovers(d, only_name=p.name))
    return out
