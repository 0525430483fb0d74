"""What to train in the time you have: the recipe `train --max-time T` picks when no preset is given.

    cfg, choice = plan(TrainConfig(data="data/ts", out="runs/10m", max_time=600), data, device)

`benchmarks/budget_sweep.py` trained a grid of shapes and learning rates for 2, 5, 10 and 30 minutes on
one machine and shipped, for each budget, the best recipe it found and the training FLOPs its run
actually got (resources/budget_table.json). A budget in seconds means nothing on another machine, so
the rule is keyed on compute: a short probe trains a fixed reference model here and measures its
FLOP/s; with each row's speed relative to that reference (measured by the sweep), the probe says how
many FLOPs (tokens) the row's model would get here in the time left. The row whose model would get
nearest (in log) to what it got in the sweep wins. Twice the speed (a faster machine, faster code)
thus picks what the sweep found best for twice the compute, and the rule carries over without
re-running the sweep. Keying on the FLOPs each run really trained also keeps the table honest when
the sweep machine was busy: a slowed run is simply a run with less compute. For the same reason a row
measured on another kind of machine (`Row.machine`) sits beside the sweep machine's row at its budget
rather than replacing it: it is one more recipe at the compute its runs got, weighed like any other.

The probe counts against the budget: training gets what is left, and the learning-rate schedule
(cosine on the clock, see `train.lr_at`) ends at the deadline. The final validation and samples come
after it, as for any `--max-time` run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from ..model.config import ModelConfig
from ..errors import UserError
from ..runtime.console import format_duration
from .precision import choose_precision, measure_speed

TABLE_FILE = "budget_table.json"
TABLE_FORMAT = "tinystories-budget-table"

# The probe's model: small enough to time in a few seconds anywhere, big enough to be matmul-bound
# like the models the table picks. Its vocabulary is the table's, whatever the data's is, so that it
# measures the machine (and the code), not the data.
REFERENCE = {"hidden": 128, "layers": 4, "heads": 4, "context": 256, "batch_size": 8}
# The probe takes 1% of the budget, between 1.5 and 20 seconds. The cap was 8 s; on a 2-core Zen 3 in fp32
# (2026-12-01) six cold 8-second probes read 59.3-70.6 GFLOP/s and six 20-second ones 64.4-71.5: building
# the model and its first step take about 2.5 s of the window, and the host's slow spells last seconds, so a
# short probe swung the 30-minute pick between two rows whose boundary sits at 63. 20 s is 1.1% of 30 minutes.
MIN_PROBE_S, MAX_PROBE_S, PROBE_FRACTION = 1.5, 20.0, 0.01
# A longer probe is not enough: the same host's speed moves +-20% over tens of seconds (one process timing
# one model in 5-second windows read 48.6 to 83.3 GFLOP/s, 2026-12-01), while whole 30-minute runs of one
# recipe trained within +-2% of each other (4,837-5,099 tokens/s over six runs on three hosts). So the run
# is planned at the median of this machine's last PROBE_HISTORY probes, this one included (kept in
# ~/.cache/tinystories/probe.json per CPU model, torch, threads, device and precision): one probe in a slow
# spell no longer changes the recipe of the next run. The first run on a machine has only its own probe.
PROBE_HISTORY = 5
PROBE_HISTORY_FILE = "probe.json"
EVALS_PER_RUN = 5              # periodic validation passes the picked run makes (cheap, inside the budget)
EVAL_TOKENS = 16_384           # tokens per periodic pass
CHECKPOINTS_PER_RUN = 4
MIN_STEPS_FOR_EVALS = 60       # shorter runs validate only at the end
KEEP_BEST_EVALS = 40           # a keep_best run's passes, its best weights chosen among them ...
KEEP_BEST_EVAL_SHARE = 0.02    # ... at most this share of its time (a 1-minute run would spend half on 40)
# Passes over train.bin past which the run is told it may be overfitting rather than learning. Measured on the
# shared 1.47M-token files at vocabulary 4096: 30 minutes of 192 x 4 (9 passes) scored 0.762 bits per byte,
# 60 minutes of 256 x 4 (13 passes) 0.778, its training loss 1.2 nats against 2.13 held out.
MANY_EPOCHS = 12


# ===================================================================== compute

def train_flops_per_token(m: ModelConfig, context: int | None = None) -> float:
    """Training FLOPs per token: 6 x every matmul weight (the output layer included, tied or not) plus
    attention's scores and mixing (forward 4 x hidden x the mean number of keys a query sees, x3 for
    training). Embedding lookups, norms and the optimizer are left out: they are not matmuls."""
    T = context or m.context
    h = m.hidden
    mlp = (3 if m.mlp == "swiglu" else 2) * h * m.mlp_width
    weights = m.layers * (4 * h * h + mlp) + h * m.vocab_size
    keys = 0.0
    for kind in m.layer_types:
        w = T if kind == "global" else min(m.window, T)
        keys += (w * (w + 1) / 2 + (T - w) * w) / T  # mean over positions of min(position + 1, w)
    return 6.0 * weights + 3.0 * 4.0 * h * keys


def reference_config(vocab_size: int) -> ModelConfig:
    r = REFERENCE
    return ModelConfig(vocab_size=vocab_size, context=r["context"], hidden=r["hidden"], layers=r["layers"],
                       heads=r["heads"])


# ===================================================================== the probe

@dataclass
class Probe:
    tokens_per_s: float
    flops_per_s: float      # training FLOP/s of the reference model (train_flops_per_token x tokens/s)
    seconds: float          # wall time the probe took, model building included
    steps: int              # timed steps
    device: str
    precision: str
    threads: int
    # what the run is planned at (`steady`): flops_per_s and tokens_per_s above become the median of this
    # machine's recent probes; measured_flops_per_s keeps this probe's own reading, history the probes counted
    measured_flops_per_s: float | None = None
    history: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def probe(seconds: float, device=None, precision: str = "fp32", vocab_size: int = 8192) -> Probe:
    """This machine's speed: the reference model's training tokens/s and FLOP/s, over about `seconds`."""
    import torch

    t0 = time.perf_counter()
    mcfg = reference_config(vocab_size)
    tps, steps = measure_speed(mcfg, REFERENCE["batch_size"], REFERENCE["context"], seconds, device, precision)
    return Probe(tokens_per_s=tps, flops_per_s=tps * train_flops_per_token(mcfg), seconds=time.perf_counter() - t0,
                 steps=steps, device=str(device or "cpu"), precision=precision, threads=torch.get_num_threads())


def history_key(pr: Probe, vocab_size: int) -> str:
    """What a probe's reading depends on besides the moment: the CPU (or GPU), torch, threads, precision."""
    import torch

    from ..runtime.device import cache_key, cpu_fingerprint

    where = cpu_fingerprint() if pr.device == "cpu" else torch.cuda.get_device_name(torch.device(pr.device))
    what = {"where": where, "torch": torch.__version__, "device": pr.device.split(":")[0], "threads": pr.threads,
            "precision": pr.precision, "vocab": vocab_size, "reference": REFERENCE}
    return cache_key(what)


def steady(pr: Probe, vocab_size: int, path: Path | None = None) -> Probe:
    """`pr` planned at the median FLOP/s of this machine's last PROBE_HISTORY probes, `pr` included; `pr`
    joins the history in `path` (default ~/.cache/tinystories/probe.json). A history that cannot be read
    or written costs the steadiness, nothing else."""
    import statistics

    from ..runtime.device import cache_root, read_cache
    from ..runtime.files import atomic_write_json

    path = path or cache_root() / PROBE_HISTORY_FILE
    key = history_key(pr, vocab_size)
    past = read_cache(path).get(key)
    past = [float(v) for v in past if isinstance(v, (int, float)) and v > 0] if isinstance(past, list) else []
    recent = (past + [pr.flops_per_s])[-PROBE_HISTORY:]
    try:  # re-read: another run may have added its probe meanwhile
        atomic_write_json(path, {**read_cache(path), key: recent})
    except OSError:
        pass
    flops = statistics.median(recent)
    return dataclasses.replace(pr, flops_per_s=flops, tokens_per_s=pr.tokens_per_s * flops / pr.flops_per_s,
                               measured_flops_per_s=pr.flops_per_s, history=len(recent))


# ===================================================================== the table

@dataclass
class Row:
    """The best recipe the sweep found for one budget, and what it got."""
    budget_s: float
    compute: float                 # training FLOPs the winning run got (train_flops_per_token x tokens)
    hidden: int
    layers: int
    heads: int
    context: int
    batch_size: int
    lr: float
    warmup_frac: float = 0.05      # warmup steps as a fraction of the run's steps
    weight_decay: float = 0.1
    dropout: float = 0.0
    position: str = "learned"
    norm: str = "layernorm"
    mlp: str = "gelu"
    bpb: float | None = None       # bits per byte on the validation text the sweep used
    tokens: int | None = None      # tokens the winning run trained on
    tokens_per_s: float | None = None
    tried: int | None = None       # recipes the sweep ran at this budget
    efficiency: float = 1.0        # this model's training FLOP/s / the reference model's, on the sweep machine
    # the optimizer and schedule the run used (older tables: AdamW on a cosine)
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"
    cooldown_frac: float = 0.2
    muon_lr: float | None = None
    # ModelConfig block options the run switched on (issue 17's ablation), e.g. {"qk_norm": true};
    # only options that export to transformers belong here (tests/test_budget.py checks it)
    block: dict[str, Any] = field(default_factory=dict)
    # the vocabulary the row's runs trained with; None = the table's. A budget may have a row per vocabulary:
    # the data's vocabulary is fixed by `prepare`, so the picker takes the row measured at it where there is one.
    vocab_size: int | None = None
    # the run kept its weights of best periodic validation (TrainConfig.keep_best), not the last step's
    keep_best: bool = False
    # where the row's runs were measured, when not on the table's machine; None = the table's. A budget's
    # seconds buy a different compute on each kind of CPU (a 2-core Zen 3 in fp32 gets about 0.4x the FLOP/s
    # of a Zen 4 in bf16), so runs on another machine add rows at their own compute rather than replace the
    # sweep machine's row at that budget; the picker compares every row by compute alike.
    machine: str | None = None

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, context=self.context, hidden=self.hidden, layers=self.layers,
                           heads=self.heads, dropout=self.dropout, position=self.position, norm=self.norm,
                           mlp=self.mlp, **self.block)

    def recipe(self) -> str:
        """The optimizer, schedule and block options, in words ("" for AdamW on a cosine, plain block)."""
        parts = [] if self.optimizer == "adamw" else [self.optimizer]
        if self.lr_schedule != "cosine":
            parts.append(f"{self.lr_schedule}" + (f" (cooldown {self.cooldown_frac:g})" if self.lr_schedule == "wsd"
                                                  else ""))
        parts += [k if v is True else f"{k}={v}" for k, v in self.block.items()]
        if self.keep_best:
            parts.append("keep_best")
        return ", ".join(parts)

    def shape(self) -> str:
        block = "" if (self.position, self.norm, self.mlp) == ("learned", "layernorm", "gelu") else \
            f", {self.position}+{self.norm}+{self.mlp}"
        return (f"hidden {self.hidden}, {self.layers} layers, {self.heads} heads of {self.hidden // self.heads}"
                f"{block}")

    def label(self) -> str:
        """e.g. 128x4/hs32, or 128x4/hs32+muon+wsd with the optimizer, schedule and block options named."""
        extra = ([self.optimizer] if self.optimizer != "adamw" else []) + \
            ([self.lr_schedule] if self.lr_schedule != "cosine" else []) + list(self.block) + \
            (["keep_best"] if self.keep_best else [])
        return f"{self.hidden}x{self.layers}/hs{self.hidden // self.heads}" + "".join(f"+{e}" for e in extra)


@dataclass
class Table:
    vocab_size: int                # the vocabulary the sweep trained with (prepare's default)
    probe_flops_per_s: float       # the reference model's training FLOP/s on the sweep machine
    machine: str
    rows: list[Row]
    metric: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        assert self.rows, "an empty budget table"
        self.rows.sort(key=lambda r: r.compute)

    @classmethod
    def from_dict(cls, d: dict) -> "Table":
        d = dict(d)
        if d.pop("format", TABLE_FORMAT) != TABLE_FORMAT:
            raise UserError("budget table: not a tinystories budget table")
        d.pop("version", None)
        rows = [Row(**r) for r in d.pop("rows")]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(rows=rows, **{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "version": 1, **dataclasses.asdict(self)}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Table":
        """The table shipped with the package, or one a sweep wrote (`path`)."""
        if path is None:
            text = resources.files("tinystories").joinpath("resources", TABLE_FILE).read_text()
        else:
            p = Path(path)
            if not p.is_file():
                raise UserError(f"budget table {p}: no such file")
            text = p.read_text()
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"budget table {path or TABLE_FILE}: unreadable ({e})") from None

    def row_vocab(self, row: Row) -> int:
        return row.vocab_size or self.vocab_size

    def row_machine(self, row: Row) -> str:
        return row.machine or self.machine

    @staticmethod
    def rung(row: Row) -> tuple[float, str | None]:
        """The budget and machine a row was measured at: the picker weighs one row per rung."""
        return row.budget_s, row.machine

    def put(self, row: Row, how: str) -> None:
        """Make `row` the table's row at its budget, vocabulary and machine (replacing one there), with the
        note "the N-minute row[ at vocabulary V][ on M]: `how`" in place of that row's earlier note."""
        key = (self.rung(row), self.row_vocab(row))
        self.rows = [r for r in self.rows if (self.rung(r), self.row_vocab(r)) != key] + [row]
        self.__post_init__()  # sorted by compute again
        name = f"the {row.budget_s / 60:g}-minute row" + (f" at vocabulary {row.vocab_size}" if row.vocab_size else "") \
            + (f" on {row.machine}" if row.machine else "")
        self.notes = [n for n in self.notes if not n.startswith(name + ":")] + [f"{name}: {how}"]

    def row_compute(self, row: Row, compute: float, vocab_size: int | None = None) -> float:
        """What `compute` (reference-model FLOPs: time x the probe's FLOP/s) buys `row`'s model, in the
        sweep's units: its relative speed, and its tokens counted at the cost per token its runs paid
        (another vocabulary makes every token dearer or cheaper)."""
        c = compute * row.efficiency
        if vocab_size and vocab_size != self.row_vocab(row):
            c *= (train_flops_per_token(row.model_config(self.row_vocab(row)))
                  / train_flops_per_token(row.model_config(vocab_size)))
        return c

    def candidates(self, vocab_size: int | None = None) -> list[Row]:
        """One row per budget and machine: the one measured at `vocab_size` where there is one, else the one
        at the table's vocabulary, else the first."""
        vocab = vocab_size or self.vocab_size
        by_rung: dict[tuple[float, str | None], list[Row]] = {}
        for row in self.rows:
            by_rung.setdefault(self.rung(row), []).append(row)
        return [next((r for r in rows if self.row_vocab(r) == vocab), None)
                or next((r for r in rows if self.row_vocab(r) == self.vocab_size), rows[0])
                for rows in by_rung.values()]

    def alternatives(self, row: Row) -> list[Row]:
        """The rows measured at `row`'s budget, on its machine, with another vocabulary and a better score."""
        return [r for r in self.rows if self.rung(r) == self.rung(row) and self.row_vocab(r) != self.row_vocab(row)
                and r.bpb is not None and row.bpb is not None and r.bpb < row.bpb]

    def pick(self, compute: float, vocab_size: int | None = None) -> tuple[Row, float]:
        """The row for `compute` (reference-model FLOPs), and what it buys that row (`row_compute`).

        Among `candidates` (a row per budget, at the data's vocabulary where measured), the row whose
        model would get nearest, in log, to the compute it got in the sweep wins; below the first row or
        past the last, the end row.
        """
        best, best_d, best_c = None, math.inf, compute
        for row in self.candidates(vocab_size):
            c = self.row_compute(row, compute, vocab_size)
            d = abs(math.log(c / row.compute))
            if d < best_d:
                best, best_d, best_c = row, d, c
        return best, best_c


# ===================================================================== the plan

_PICKED_TRAIN = ("batch_size", "context", "lr", "warmup_steps", "weight_decay", "eval_every", "eval_tokens",
                 "checkpoint_every", "optimizer", "lr_schedule", "cooldown_frac", "muon_lr", "keep_best")
_PICKED_MODEL = ("hidden", "layers", "heads", "context", "dropout", "position", "norm", "mlp")


def wanted(cfg) -> bool:
    """Whether `train` should pick the recipe: no preset, and a time limit alone says when to stop."""
    return cfg.preset is None and cfg.max_time is not None and cfg.max_steps is None and cfg.max_tokens is None


def plan(cfg, data, device, *, table: Table | None = None, say: Callable[[str], None] | None = None,
         world: int = 1) -> tuple[Any, dict]:
    """The TrainConfig `train` runs for `cfg.max_time` seconds on this machine, and the choice explained.

    Settings the user gave (`cfg.given`: recipe keys, flags and --set keys, even one equal to the default;
    anything else that differs from TrainConfig's defaults; every `model.*` field set) are kept; the
    picker fills in the rest from the table row. `cfg.max_time` becomes the
    time left after the probe, less one step and one validation pass, so that the run ends by the
    deadline.
    """
    from .config import TrainConfig

    t_start = time.time()
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    table = table or Table.load()
    budget = float(cfg.max_time)
    defaults = TrainConfig()

    pr = _probe_as_training(cfg, device, world, table, budget, say)
    left = budget - (time.time() - t_start)
    if left <= 0:
        raise UserError(f"--max-time {format_duration(budget)}: too short to train anything here (the speed probe "
                        f"alone took {pr.seconds:.1f}s); give more time, or a --preset and --max-steps")
    compute = pr.flops_per_s * left
    row, row_compute = table.pick(compute, data.vocab_size)

    user_model = dict(cfg.model)
    user = {k for k in _PICKED_TRAIN if k in cfg.given or getattr(cfg, k) != getattr(defaults, k)}
    if cfg.context is None:
        user.discard("context")  # context=none: the model's, and the model is the row's
    context = cfg.context if "context" in user else row.context
    batch = cfg.batch_size if "batch_size" in user else max(1, row.batch_size // world)
    model = {"hidden": row.hidden, "layers": row.layers, "heads": row.heads, "context": max(row.context, context),
             "dropout": row.dropout, "position": row.position, "norm": row.norm, "mlp": row.mlp, **row.block}
    model.update(user_model)

    # the model that will train here (the row's, with any model.* the user set): the probe's FLOP/s, times
    # the row's speed relative to the reference, over this model's cost per token at this vocabulary. Using
    # the row's own shape instead planned a wider --set model.hidden as if it ran at the row's speed, so its
    # warmup, checkpoints and evals came too late (192 x 4 expected 12,604 tokens/s and trained at ~7,500).
    tps = pr.flops_per_s * row.efficiency / train_flops_per_token(
        ModelConfig(**{**model, "vocab_size": data.vocab_size}), context)
    tokens_per_step = batch * cfg.grad_accum * world * context
    step_s = tokens_per_step / tps
    eval_tokens = cfg.eval_tokens if "eval_tokens" in user else EVAL_TOKENS
    rough_steps = left / step_s
    keep_best = cfg.keep_best if "keep_best" in user else row.keep_best
    pass_s = (eval_tokens or len(data.val)) / (2.5 * tps)  # a validation pass: forward only, ~3x cheaper per token
    # periodic validation only when the run is long enough for a curve; it costs ~1% of the budget. keep_best
    # chooses its weights among these passes, so it always has them, and more of them.
    if "eval_every" in user:
        eval_every = cfg.eval_every
    elif keep_best:
        passes = min(KEEP_BEST_EVALS, max(EVALS_PER_RUN, int(KEEP_BEST_EVAL_SHARE * left / pass_s)))
        eval_every = max(1, int(rough_steps // (passes + 1)))
    else:
        eval_every = int(rough_steps // (EVALS_PER_RUN + 1)) if rough_steps >= MIN_STEPS_FOR_EVALS else 0
    # the last periodic pass may start just before the deadline; eval_tokens=None passes over all of val.bin,
    # the longest pass of all, so it is reserved too (it once reserved nothing for it)
    eval_s = pass_s if eval_every else 0.0
    train_s = left - 1.0 - step_s - eval_s  # end by the deadline: the last step and eval may start late
    if train_s < 2 * step_s:
        raise UserError(f"--max-time {format_duration(budget)}: too short to train anything here "
                        f"(the probe took {pr.seconds:.1f}s, one step of the picked recipe takes ~{step_s:.1f}s); "
                        f"give more time, or a --preset and --max-steps")
    steps = max(1, int(train_s / step_s))

    picked = {
        "batch_size": batch, "context": context, "lr": row.lr, "weight_decay": row.weight_decay,
        "warmup_steps": max(1, round(row.warmup_frac * steps)),
        "eval_every": eval_every, "eval_tokens": eval_tokens,
        "checkpoint_every": max(1, steps // CHECKPOINTS_PER_RUN),
        "optimizer": row.optimizer, "lr_schedule": row.lr_schedule, "cooldown_frac": row.cooldown_frac,
        "muon_lr": row.muon_lr, "keep_best": keep_best,
    }
    changes = {k: v for k, v in picked.items() if k not in user}
    new = cfg.replace(**changes, model=model, max_time=round(train_s, 3))

    shape = Row(**{**dataclasses.asdict(row), **{k: model[k] for k in ("hidden", "layers", "heads", "dropout",
                                                                      "position", "norm", "mlp")},
                   "optimizer": new.optimizer, "lr_schedule": new.lr_schedule, "cooldown_frac": new.cooldown_frac,
                   "block": {k: model[k] for k in row.block}, "keep_best": new.keep_best})
    epoch_tokens = len(data.train)
    kept = sorted(user | {f"model.{k}" for k in user_model if k in _PICKED_MODEL or k in row.block})
    choice = {
        "budget_s": budget, "deadline": round(t_start + budget, 3), "train_s": round(train_s, 3),
        "eval_s": round(eval_s, 4),
        "label": f"auto {shape.label()}",
        "probe": pr.to_dict(), "compute": compute, "row": dataclasses.asdict(row), "kept": kept,
        "table_machine": table.machine, "expected_tokens_per_s": round(tps, 1),
        "expected_tokens": int(tps * train_s), "picked": {**changes, "model": model}, "lr": new.lr,
    }
    _explain(say, table, row, pr, vocab_size=data.vocab_size, budget=budget, left=left, row_compute=row_compute,
             new=new, shape=shape, model=model, kept=kept, batch=batch, tps=tps, steps=steps, train_s=train_s,
             epochs=tps * train_s / max(epoch_tokens, 1))
    return new, choice


def probe_precision(requested: str, vocab_size: int, device, seconds: float) -> str:
    """The precision the probe runs in: training's measured decision for the reference model (cached), timed
    briefly since a short budget cannot spare seconds, and quiet (the budget line names it). A row's speed
    relative to the probe means something only when the row's run and its probe ran in one precision: the
    Muon sweep's probes ran in fp32 while its runs trained in bf16, so its rows expected 1.3-1.5x their speed."""
    import torch

    return choose_precision(requested, reference_config(vocab_size), REFERENCE["batch_size"], REFERENCE["context"],
                            torch.device(device or "cpu"), seconds=seconds, say=lambda line: None).precision


def _probe_as_training(cfg, device, world: int, table: Table, budget: float, say) -> Probe:
    """The speed probe, run as training will: same device, threads and precision."""
    import torch

    from ..runtime.device import physical_cores

    old_threads = torch.get_num_threads()
    if device.type == "cpu":
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, physical_cores() // world))
    try:
        probe_s = min(MAX_PROBE_S, max(MIN_PROBE_S, PROBE_FRACTION * budget))
        precision = probe_precision(cfg.precision, table.vocab_size, device, probe_s / 4)
        return steady(probe(probe_s, device, precision, table.vocab_size), table.vocab_size)
    finally:
        torch.set_num_threads(old_threads)


def _explain(say, table: Table, row: Row, pr: Probe, *, vocab_size: int, budget: float, left: float,
             row_compute: float, new, shape: Row, model: dict, kept: list[str], batch: int, tps: float,
             steps: int, train_s: float, epochs: float) -> None:
    """The budget lines: the probe, the row picked and why, the recipe (naming the settings kept as yours)."""
    measured = pr.measured_flops_per_s or pr.flops_per_s
    steadied = (f"; the median of this machine's last {pr.history} probes, {pr.flops_per_s / 1e9:.1f} GFLOP/s, "
                f"plans the run" if pr.history > 1 else "")
    say(f"budget: {format_duration(budget)} here ({pr.device}, {pr.precision}, {pr.threads} threads): a "
        f"{pr.seconds:.1f}s probe trained the reference {REFERENCE['hidden']}x{REFERENCE['layers']} model at "
        f"{pr.tokens_per_s * measured / pr.flops_per_s:,.0f} tokens/s = {measured / 1e9:.1f} GFLOP/s{steadied} "
        f"({pr.flops_per_s / table.probe_flops_per_s:.2f}x the sweep machine)")
    got = f"{row.bpb:.3f} bits per byte, " if row.bpb is not None else ""
    # a row the sweep chose among several recipes, or one measured as the recipe of its budget (budget_check.py)
    what = f"the sweep's {format_duration(row.budget_s)} winner ({got}best of {row.tried} recipes; " if row.tried \
        else f"the table's {format_duration(row.budget_s)} recipe ({got}"
    say(f"budget: in the {format_duration(left)} left its {row.label()} model would train {row_compute / 1e12:.1f} TFLOP "
        f"here; as {what}{table.row_machine(row)}) it trained "
        f"{row.compute / 1e12:.1f}: the nearest of the table's {len(table.candidates(vocab_size))} rungs")
    ratio = row_compute / row.compute
    if not 0.5 < ratio < 2:
        say("budget: note: " + (f"{ratio:.2g}x the compute of the sweep's smallest budget: its recipe may be too big "
                                "here"
                                if ratio < 1 else
                                f"{ratio:.1f}x the compute of the sweep's largest budget: its recipe, on a longer "
                                "schedule; the sweep has not measured whether a bigger model does better here"))
    for alt in table.alternatives(row):
        say(f"budget: note: at {format_duration(row.budget_s)} the table also has a row measured at vocabulary "
            f"{table.row_vocab(alt):,} ({alt.label()}, {alt.bpb:.3f} bits per byte against this row's "
            f"{row.bpb:.3f}); to train it, prepare the data with --vocab-size {table.row_vocab(alt)}")
    recipe = shape.recipe()
    say(f"budget: picked {shape.shape()}{', ' + recipe if recipe else ''}, context {new.context}, "
        f"batch {batch} x {new.context}, lr {new.lr:g}, "
        f"warmup {new.warmup_steps} steps, weight decay {new.weight_decay:g}, dropout {model['dropout']:g}"
        + (f" (yours: {', '.join(kept)})" if kept else ""))
    say(f"budget: expect ~{tps:,.0f} tokens/s, ~{steps:,} steps, ~{tps * train_s / 1e6:.2f}M tokens "
        f"({epochs:.1f} epochs of train.bin); training gets {format_duration(train_s)}, "
        f"the learning rate reaches its floor at the end")
    if epochs > MANY_EPOCHS:
        say(f"budget: note: ~{epochs:.0f} passes over train.bin; past ~{MANY_EPOCHS} the model starts to memorise "
            f"rather than learn (on the shared 1.5M-token files a 60-minute run scored worse than a 30-minute "
            f"one), so more training data would help more than more time")
