"""The one exception type for mistakes a user can make (bad file, bad option), and the error boundary.

The CLI prints a UserError as a single line and exits non-zero. Some errors a user causes arrive as
other classes (a directory that cannot be written, a disk that is full, a binary file where text was
expected): `user_message` turns those into one line naming the file. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import errno
import json
import os
import types
from pathlib import Path, PurePath


class UserError(Exception):
    """Bad input from the user: a message that names the file or option and says what to do."""


# errno -> what to do about it; these are facts about the user's files and machine, never our bugs.
_OS_HINTS = {
    errno.EACCES: "check its permissions or pick another path",
    errno.EPERM: "check its permissions or pick another path",
    errno.EROFS: "the file system is read-only; pick another path",
    errno.ENOSPC: "the disk is full; free some space or pick another path",
    errno.EDQUOT: "the disk quota is exceeded; free some space or pick another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; pick another path",
    errno.EISDIR: "it is a directory; give a file name",
    errno.ENAMETOOLONG: "the name is too long; pick a shorter path",
    errno.EEXIST: "it already exists; pick another path",
    errno.ENOTEMPTY: "the directory is not empty; pick another path",
    errno.ELOOP: "too many symbolic links; check the path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.EFBIG: "the file is too large for this file system",
    errno.EIO: "an input/output error from the disk",
}


def user_message(exc: BaseException) -> str | None:
    """One line for an error the user caused (their files, their disk), or None: a bug, show the traceback.

    The line names the file: from the exception when it says (OSError.filename), else from the
    innermost frame that was reading a file (for UnicodeDecodeError and JSON errors, which do not).
    """
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in _OS_HINTS:
        name = exc.filename if exc.filename is not None else _file_in_traceback(exc)
        what = f"{name}: " if name is not None else ""
        if exc.filename2 is not None:
            what = f"{exc.filename} -> {exc.filename2}: "
        if name is None and exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.EFBIG):
            return None  # an unnamed missing file or permission problem is more likely our bug
        reason = exc.strerror or os.strerror(exc.errno)
        return f"{what}{reason.lower()}; {_OS_HINTS[exc.errno]}"
    if isinstance(exc, UnicodeDecodeError):
        name = _file_in_traceback(exc)
        if name is None:
            return None
        return f"{name}: not UTF-8 text (bad byte at offset {exc.start}); convert it to UTF-8 or give the right file"
    if isinstance(exc, json.JSONDecodeError):
        name = _file_in_traceback(exc)
        if name is None:
            return None
        return (f"{name}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                f"the file is damaged or not the one expected")
    return None


def _file_in_traceback(exc: BaseException) -> str | None:
    """The file an error happened on, read from the frames' locals, innermost first: pathlib's `self`
    (path.read_text() and friends) or a local path variable of the function that was reading."""
    frames: list[types.FrameType] = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name, value in frame.f_locals.items():
            if not isinstance(value, (PurePath, str)) or isinstance(value, bool):
                continue
            if isinstance(value, str) and name not in ("path", "file", "filename", "fname"):
                continue
            if name not in ("self", "path", "file", "filename", "fname", "meta_path", "saved", "p", "f"):
                continue
            p = Path(value)
            if str(p) and p.exists():
                return str(p)
    return None
