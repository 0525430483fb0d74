"""One `train` at a time per run directory.

The lock is an `fcntl.flock` on a hidden sibling file (`.NAME.lock`), taken before the run directory is
created or touched. The kernel drops a flock when its process dies, however it dies, so a lock left by a
killed run is never in the way: the next run takes it over without any staleness guess. The file holds
the owner's pid, for the message the second run prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import UserError


class RunLock:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        run_dir = Path(run_dir)
        self.path = run_dir.with_name(f".{run_dir.name}.lock")
        self.run_dir, self.enabled, self.fd = run_dir, enabled, None

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"--out {self.run_dir}: cannot create a lock beside it ({e.strerror}); "
                            "choose an --out in a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"--out {self.run_dir} is in use by another training run (pid {owner}); "
                            "wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        # Unlink while still holding the lock, so no other run can be holding this same file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
