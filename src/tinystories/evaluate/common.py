"""What every evaluation shares: the model's identity, where reports go, and confidence intervals."""

from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path

from ..errors import UserError
from ..runtime.files import atomic_write_json, atomic_write_text

REPORT_DIR = "eval"     # reports land in MODEL_DIR/eval/<kind>.json + .md unless --out says otherwise
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_model_dir(model_dir: str | Path) -> Path:
    """The directory, or a one-line UserError if it is not a model (or run) directory."""
    from ..model.modeldir import read_config

    read_config(model_dir)
    return Path(model_dir)


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 of the weights file(s): a model's identity in cache keys and reports."""
    model_dir = Path(model_dir)
    files = [model_dir / f for f in WEIGHT_FILES if (model_dir / f).is_file()]
    files += sorted(p for p in model_dir.glob("model-*.safetensors"))  # sharded transformers checkpoints
    if not files:
        raise UserError(f"{model_dir}: no weights file ({' or '.join(WEIGHT_FILES)})")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def report_dir(model_dir: str | Path, out: str | Path | None) -> Path:
    return Path(out) if out is not None else Path(model_dir) / REPORT_DIR


def check_report_dir(out_dir: str | Path) -> None:
    """UserError now if `out_dir` could not be made and written later (after minutes of generating, or a paid
    judge). Nothing is left behind: the nearest existing folder gets a probe directory, removed at once
    (os.access would say yes to root even where the file system refuses, as under /sys)."""
    import tempfile

    out_dir = Path(out_dir)
    base = out_dir
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"--out {out_dir}: {base} is not a directory; pass another --out")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=base))
    except OSError as e:
        raise UserError(f"--out {out_dir}: cannot write the report there ({e.strerror}); pass another --out") from None


def write_report(out_dir: str | Path, kind: str, report: dict, markdown: str | None = None) -> Path:
    """Write <kind>.json (and <kind>.md) atomically into `out_dir`; returns the JSON path."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{kind}.json"
        atomic_write_json(path, report)
        if markdown is not None:
            atomic_write_text(out_dir / f"{kind}.md", markdown)
    except OSError as e:
        raise UserError(f"--out {out_dir}: cannot write the report there ({e.strerror}); pass another --out") from None
    return path


def mean_ci(groups: list[list[float]], reps: int = 2000, seed: int = 0) -> dict:
    """Mean of all values, with a 95% percentile-bootstrap interval that resamples whole groups.

    A group is one prompt's completions: they share a beginning, so they are not independent, and
    resampling prompts (not completions) gives an honest interval. With a single group it falls
    back to resampling the values themselves.
    """
    groups = [g for g in groups if g]
    values = [v for g in groups for v in g]
    if not values:
        return {"mean": None, "ci95": [None, None], "n": 0}
    mean = sum(values) / len(values)
    units = groups if len(groups) > 1 else [[v] for v in values]
    rng = random.Random(seed)
    stats = []
    for _ in range(reps):
        pick = [units[rng.randrange(len(units))] for _ in units]
        s = sum(sum(g) for g in pick)
        c = sum(len(g) for g in pick)
        stats.append(s / c)
    stats.sort()
    lo = stats[int(math.floor(0.025 * (reps - 1)))]
    hi = stats[int(math.ceil(0.975 * (reps - 1)))]
    return {"mean": mean, "ci95": [lo, hi], "n": len(values)}


def fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
