"""What a long job shows a person: progress bars, and durations read and written."""

from __future__ import annotations

import os
import re
import sys

from ..errors import UserError

# ---------------------------------------------------------------- progress

def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", unit_scale: bool = False,
             leave: bool = True, disable: bool | None = None, **kw):
    """A tqdm bar on stderr; quiet when TINYSTORIES_QUIET=1 (tests, scripts). Into a log file (stderr not a
    terminal) it is redrawn every 30 s rather than every step, so a long run's log stays readable."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = os.environ.get("TINYSTORIES_QUIET") == "1"
    if not kw.get("mininterval") and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        kw["mininterval"] = 30.0
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave,
                disable=disable, dynamic_ncols=True, file=sys.stderr, **kw)


# ---------------------------------------------------------------- parsing

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$")


def parse_duration(text: str | float | int, option: str = "--max-time") -> float:
    """'90', '90s', '20m', '1.5h' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise UserError(f"{option}: cannot read {text!r} as a duration; use e.g. 90s, 20m or 1.5h")
    value, unit = float(m.group(1)), (m.group(2) or "s")
    return value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[unit]


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


