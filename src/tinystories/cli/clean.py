"""`tinystories clean PATH...`: remove what killed runs left behind (temporary siblings, half-swapped outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from .command import Command, Positional, arg

DESCRIPTION = ("A killed prepare, export, train or generate can leave hidden temporary siblings "
               "(.NAME.PID.XXXXXXXX.tmp) beside its output; the next run on the same path removes them, and this "
               "command removes them everywhere under each PATH. Only names this package makes are touched, and "
               "only those whose process is gone (or, for older names without a process id, that have not changed "
               "for an hour). An output whose replacement was interrupted between its two renames is put back.")


@dataclass
class CleanArgs:
    paths: Annotated[Positional[list[str]], arg(metavar="PATH")]
    """directories to search (recursively), or outputs"""
    dry_run: bool = False
    """only list what would be removed"""


def run(args: CleanArgs) -> int:
    from ..runtime.files import clean

    found = clean(args.paths, dry_run=args.dry_run)
    rm, back = ("would remove", "would put back") if args.dry_run else ("removed", "put back")
    for f in found:
        print(f"{back if f.action == 'restored' else rm} {f.path} ({_size(f.bytes)})")
    removed = [f for f in found if f.action == "removed"]
    restored = len(found) - len(removed)
    print(f"{rm} {len(removed)} leftover(s), {_size(sum(f.bytes for f in removed))}"
          + (f"; {back} {restored} interrupted output(s)" if restored else ""))
    return 0


COMMAND = Command("clean", help="remove the leftovers of killed runs (hidden .tmp siblings) under PATHs",
                  config=CleanArgs, run=run, description=DESCRIPTION)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
