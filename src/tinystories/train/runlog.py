"""The run log: metrics.jsonl, loss.png and, optionally, TensorBoard."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import UserError
from ..runtime.files import atomic_write_bytes
from .config import METRICS_FILE, PLOT_FILE

# ===================================================================== run log

_TENSORBOARD = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                "tokens_per_s": "train/tokens_per_s", "val_loss": "val/loss", "val_bpb": "val/bits_per_byte"}


class RunLog:
    """metrics.jsonl (one JSON object per log step or eval), loss.png, and optionally TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None, tensorboard: bool):
        self.path = run_dir / METRICS_FILE
        self.plot = run_dir / PLOT_FILE
        self.enabled = enabled
        self.records: list[dict] = []
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            # Keep what the checkpoint covers; the steps after it will be logged again.
            try:
                text = self.path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{self.path}: not a metrics log (not UTF-8 text); move it away and --resume again") from None
            for line in text.splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    r = json.loads(line)
                    if r.get("step", 0) <= resume_step:
                        self.records.append(r)
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())
        self.file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("tensorboard = true needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=(resume_step or 0) + 1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, name in _TENSORBOARD.items():
                if k in record:
                    self.tb.add_scalar(name, record[k], record["step"])
            self.tb.flush()

    def draw(self, title: str = "") -> None:
        """Redraw loss.png: training loss per log step and validation loss per eval, against tokens."""
        if not self.enabled:
            return
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import (
            Figure,  # no pyplot: no global state, no GUI backend, faster import
        )

        train = [(r["tokens"], r["loss"]) for r in self.records if "loss" in r]
        val = [(r["tokens"], r["val_loss"]) for r in self.records if "val_loss" in r]
        fig = Figure(figsize=(8, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if train:
            ax.plot(*zip(*train), lw=1, alpha=0.7, label="train")
        if val:
            ax.plot(*zip(*val), "o-", lw=2, ms=4, label="validation")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        atomic_write_bytes(self.plot, buf.getvalue())

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


