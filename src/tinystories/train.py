"""Training on one machine (CPU, one GPU, or several GPUs through torchrun): fast, resumable, observable.

    cfg = TrainConfig(data="data/ts", out="runs/1M", preset="1M", max_time=600)
    summary = train(cfg)

The pieces, top to bottom: `TrainConfig` (typed, validated, loadable from TOML recipes and
`key=value` overrides), the data (`TokenWindows`: seeded, resumable batches from a memmapped
train.bin), the learning-rate schedule, the run log (metrics.jsonl, loss.png, TensorBoard), and
`train` itself. Checkpoint files are `checkpoint.py`'s job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import signal
import sys
import time
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import ModelConfig, preset_config
from .budget import wanted as budget_wanted
from .errors import UserError
from .metrics import stream_loss
from .modeldir import save_model
from .tokenizer import TOKENIZER_FILE, Tokenizer
from .utils import atomic_dir, atomic_write_bytes, atomic_write_json, format_duration, parse_duration, progress

DEFAULT_PRESET = "1M"
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
SUMMARY_FILE = "summary.json"


# ===================================================================== configuration

@dataclass
class TrainConfig:
    """Everything that defines a training run. Saved (resolved) in RUN_DIR/train_config.json."""
    # -- what and where
    data: str = ""                   # DATA_DIR from `tinystories prepare`
    out: str = ""                    # RUN_DIR
    preset: str | None = None        # model shape (config.PRESETS); None = picked for max_time (budget.py), else DEFAULT_PRESET
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides: heads, context, dropout, ...
    seed: int = 1337
    # -- batch: tokens per optimizer step = batch_size * grad_accum * processes * context
    batch_size: int = 8              # sequences per micro-batch, per process
    grad_accum: int = 1              # micro-batches per optimizer step
    context: int | None = None       # training sequence length; None = the model's context
    # -- optimizer: AdamW, weight decay on matrices only
    lr: float = 1e-3
    min_lr_ratio: float = 0.1        # the schedule's floor, as a fraction of lr
    lr_schedule: str = "cosine"      # cosine | constant (both after warmup)
    warmup_steps: int = 100
    decay_steps: int | None = None   # cosine length in steps; None = to the end of the run (see lr_at)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0           # max global grad norm; 0 = no clipping
    # -- when to stop (whichever comes first; at least one is required)
    max_steps: int | None = None
    max_tokens: int | None = None
    max_time: float | None = None    # seconds of wall time (recipes and --set also take "20m", "1.5h")
    # -- speed
    device: str = "auto"             # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"          # auto | bf16 | fp16 | fp32: autocast dtype; weights stay fp32
    compile: str = "auto"            # auto | on | off: torch.compile (auto = CUDA runs long enough: compile_pays)
    threads: int | None = None       # CPU threads per process; None = $OMP_NUM_THREADS or physical cores
    # -- observing
    log_every: int = 10              # steps between metrics.jsonl lines
    eval_every: int = 100            # steps between validation passes; 0 = only at the end
    eval_tokens: int | None = 32768  # validation tokens per periodic pass; None = all of val.bin
    final_eval_tokens: int | None = 262_144  # validation tokens at the end; None = all of val.bin
    eval_batch_size: int | None = None  # None = batch_size
    checkpoint_every: int = 250      # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    tensorboard: bool = False        # also log to RUN_DIR/tensorboard (needs the tensorboard package)
    samples: int = 2                 # stories generated for the end-of-run summary
    sample_tokens: int = 200

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name, msg):
            raise UserError(f"train config: {name} {msg}")

        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                bad(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "samples", "sample_tokens"):
            if getattr(self, name) < 0:
                bad(name, f"must be 0 or more, got {getattr(self, name)}")
        for name in ("max_steps", "max_tokens", "max_time", "context", "decay_steps", "threads", "eval_tokens",
                     "final_eval_tokens", "eval_batch_size"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                bad(name, f"must be positive, got {v}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", f"must be a positive number, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            bad("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, f"must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "eps"):
            if getattr(self, name) < 0:
                bad(name, f"must be 0 or more, got {getattr(self, name)}")
        for name, allowed in (("lr_schedule", ("cosine", "constant")), ("precision", ("auto", "bf16", "fp16", "fp32")),
                              ("compile", ("auto", "on", "off"))):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for key in self.model:
            if key not in _MODEL_FIELDS:
                raise UserError(_unknown_key(f"model.{key}", [f"model.{k}" for k in _MODEL_FIELDS], "train config"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "train config") -> "TrainConfig":
        """Build from plain values (TOML, JSON, --set strings), converting and checking each one."""
        values = {}
        for key, value in d.items():
            if key == "model":
                if not isinstance(value, dict):
                    raise UserError(f"{where}: model must be a table of model fields, got {value!r}")
                values["model"] = {k: _coerce_model(k, v, where) for k, v in value.items()}
            elif key in _TRAIN_FIELDS:
                values[key] = _coerce(key, value, _TRAIN_HINTS[key], where)
            else:
                raise UserError(_unknown_key(key, [*_TRAIN_FIELDS, *(f"model.{k}" for k in _MODEL_FIELDS)], where))
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


_TRAIN_HINTS = typing.get_type_hints(TrainConfig)
_TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
_MODEL_HINTS = typing.get_type_hints(ModelConfig)
_MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]

# What --resume may change: how long to run and how to watch it, the optimizer (to recover from a
# divergence), where and how fast. The shape, the sequence length and the seed define the run.
RESUME_FROZEN = ("preset", "model", "context", "seed")


def _unknown_key(key: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if not close and f"model.{key}" in known:
        close = [f"model.{key}"]
    hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(known)}"
    return f"{where}: unknown config key {key!r}{hint}"


def _coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """Convert a TOML/JSON/--set value to the field's type, or raise a UserError that names the key."""
    def fail(expected):
        raise UserError(f"{where}: {name} must be {expected}, got {value!r}")

    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if name == "max_time":
        return parse_duration(value, option=f"{where}: max_time") if not isinstance(value, bool) else fail("a duration")
    if name == "compile" and isinstance(value, bool):
        return "on" if value else "off"
    if hint is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("true", "1", "yes", "on"):
            return True
        if s in ("false", "0", "no", "off"):
            return False
        fail("true or false")
    if hint is int:
        if isinstance(value, bool):
            fail("an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.replace("_", ""))
            with contextlib.suppress(ValueError):
                f = float(value)
                if f.is_integer():
                    return int(f)
        fail("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
        fail("a number")
    if hint is str:
        return value if isinstance(value, str) else fail("a string")
    if typing.get_origin(hint) in (dict, list) or typing.get_origin(hint) is typing.Union or args:
        return value  # model dict, attention lists: checked by ModelConfig itself
    return value


def _coerce_model(key: str, value: Any, where: str) -> Any:
    if key not in _MODEL_HINTS:
        raise UserError(_unknown_key(f"model.{key}", [f"model.{k}" for k in _MODEL_FIELDS], where))
    return _coerce(f"model.{key}", value, _MODEL_HINTS[key], where)


def parse_value(text: str) -> Any:
    """A --set value: read as a TOML value when it is one (numbers, true, [lists], "strings"), else as text."""
    with contextlib.suppress(tomllib.TOMLDecodeError):
        return tomllib.loads(f"v = {text}")["v"]
    return text


def apply_sets(d: dict, sets: list[str]) -> dict:
    """Apply `key=value` overrides (`model.X=...` for model fields) onto a config dict."""
    d = {**d, "model": dict(d.get("model") or {})}
    for item in sets:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set lr=3e-4 or --set model.dropout=0.1")
        if key.startswith("model."):
            d["model"][key[len("model."):]] = parse_value(text.strip())
        else:
            d[key] = parse_value(text.strip())
    return d


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("tinystories").joinpath("recipes").iterdir()
                  if p.name.endswith(".toml"))


def load_recipe(name_or_path: str) -> dict:
    """A recipe's settings: a TOML file path, or the name of one shipped in tinystories/recipes/."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise UserError(f"--config {name_or_path}: no such file")
        text, where = path.read_text(), str(path)
    else:
        res = resources.files("tinystories").joinpath("recipes", f"{name_or_path}.toml")
        if not res.is_file():
            raise UserError(f"--config {name_or_path}: not a file and not a recipe; recipes: {', '.join(recipe_names())}")
        text, where = res.read_text(), f"recipe {name_or_path}"
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: not valid TOML ({e})") from None
    TrainConfig.from_dict(d, where=where)  # check every key and value now, naming the file
    return d


def build_config(*, recipe: str | None = None, sets: list[str] = (), base: dict | None = None,
                 **options) -> TrainConfig:
    """The CLI's layering: base (defaults, or the saved config on --resume) <- recipe <- options <- --set."""
    d = dict(base or {})
    if recipe:
        r = load_recipe(recipe)
        d.update({k: v for k, v in r.items() if k != "model"})
        d["model"] = {**(d.get("model") or {}), **r.get("model", {})}
    d.update({k: v for k, v in options.items() if v is not None})
    return TrainConfig.from_dict(apply_sets(d, list(sets)), where="--set" if sets else "train config")


# ===================================================================== data

class TokenWindows:
    """Training sequences from one token file, in a seeded order that is a pure function of position.

    The file is cut into windows of `context + 1` tokens (input and shifted target). Each epoch
    visits every window once in a permutation drawn from (seed, epoch), with the window grid shifted
    by a random offset so that epochs see different boundaries. Sample i of the whole run is
    therefore known without any state, and resuming needs only the count of samples consumed.
    Processes of a DDP run take disjoint slices of the same global sequence.
    """

    def __init__(self, tokens: np.ndarray, context: int, seed: int):
        self.tokens, self.context, self.seed = tokens, context, seed
        self.n = max(0, (len(tokens) - context) // context)  # windows that fit at any shift < context
        self._epochs: dict[int, tuple[int, np.ndarray]] = {}

    def _epoch(self, e: int) -> tuple[int, np.ndarray]:
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, e])
            self._epochs = {e: (int(rng.integers(self.context)), rng.permutation(self.n))}
        return self._epochs[e]

    def batch(self, first: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples first .. first+size-1 as (inputs, targets), int64 [size, context]."""
        T, rows = self.context, []
        for i in range(first, first + size):
            e, j = divmod(i, self.n)
            shift, perm = self._epoch(e)
            start = shift + int(perm[j]) * T
            rows.append(np.asarray(self.tokens[start:start + T + 1], dtype=np.int64))
        xy = torch.from_numpy(np.stack(rows))
        return xy[:, :-1], xy[:, 1:]


# ===================================================================== schedule

def lr_at(cfg: TrainConfig, step: int, total_steps: int | None, time_fraction: float | None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine down to the floor.

    The cosine runs over `decay_steps`, else over the run's step count (from max_steps or max_tokens),
    else, for a run bounded only by max_time, over the wall clock, so that it ends at the deadline.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    total = cfg.decay_steps or total_steps
    if total is not None:
        p = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    else:
        p = time_fraction or 0.0
    p = min(max(p, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


# ===================================================================== hardware

def physical_cores() -> int:
    """Cores this process may run on, counting hyperthread siblings once (they slow matmuls down)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast is a speed-up here: native on recent GPUs; on a CPU, measured.

    CPUs without bf16 instructions (no AVX-512 BF16 / AMX) emulate it tens of times slower than fp32,
    so a quick matmul probe decides rather than a feature list.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    a32, b32 = torch.randn(256, 512), torch.randn(512, 256)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def best(a, b):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times[1:])

    return best(a16, b16) < 0.8 * best(a32, b32)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if bf16_pays(device) else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError(f"precision fp16 needs a CUDA GPU (it needs loss scaling); on {device.type} use bf16 or fp32")
    return name


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}

# torch.compile takes about a minute before the first step; it must have time to pay that back.
COMPILE_MIN_STEPS = 500
COMPILE_MIN_SECONDS = 300


def compile_pays(cfg: TrainConfig, device: torch.device, total_steps: int | None) -> bool:
    """compile=auto: on for CUDA runs long enough to repay the compile time; off on CPUs.

    On a CPU, measured (benchmarks/run.py shapes, AVX2): compiled steps were no faster, because the
    steps are bound by matrix products and the fused attention and loss kernels, which compile
    cannot improve on, while compiling costs 30-70 s. On a GPU, where small models are bound by
    kernel launches, compile fuses the elementwise work (untested on a GPU in this repository).
    """
    if device.type != "cuda":
        return False
    if total_steps is not None and total_steps < COMPILE_MIN_STEPS:
        return False
    return cfg.max_time is None or cfg.max_time >= COMPILE_MIN_SECONDS


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on every matrix (2-D weight) and none on biases and norm gains.

    Matrices include the token embedding (tied to the output layer) and the position table,
    as in GPT-2/nanoGPT and in the `transformers` Trainer the paper used.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if device.type in ("cuda", "cpu"):  # fused: one kernel for all parameters instead of a loop
        with contextlib.suppress(RuntimeError, TypeError):
            return torch.optim.AdamW(groups, fused=True, **kw)
    return torch.optim.AdamW(groups, **kw)


# ===================================================================== distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def _init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group, nccl on GPUs and gloo on CPUs."""
    from .utils import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), resolve_device(device_name)
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"--device {device_name}: multi-process training runs on CUDA GPUs or on CPUs (gloo)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


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
            for line in self.path.read_text().splitlines():
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
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend, faster import

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


# ===================================================================== training

class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run stopped before the bad step touched the weights."""


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Train a model as `cfg` says; returns the summary (also in RUN_DIR/summary.json).

    `resume` continues RUN_DIR from its newest checkpoint (the same run: with the same settings the
    losses are exactly those of an uninterrupted run). Without it, RUN_DIR must not exist, unless
    `force`, which replaces an earlier run directory.
    """
    dist_, device = _init_distributed(cfg.device)
    old_threads = torch.get_num_threads()
    try:
        return _train(cfg, dist_, device, resume, force)
    finally:
        torch.set_num_threads(old_threads)
        if dist_.on:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def _train(cfg: TrainConfig, dist_: Dist, device: torch.device, resume: bool, force: bool) -> dict:
    if not cfg.out:
        raise UserError("--out is required: the run directory to write")
    if cfg.max_steps is None and cfg.max_tokens is None and cfg.max_time is None:
        raise UserError("say when to stop: --max-steps N, --max-tokens N or --max-time 20m (or set one in --config)")
    run_dir = Path(cfg.out)

    # -- the run directory: new, replaced, or resumed (checked on every rank before anyone writes)
    start_ckpt = None
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"--resume: {run_dir} is not a training run directory (no {CONFIG_FILE})")
        saved = TrainConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text()), where=str(run_dir / CONFIG_FILE))
        cfg = cfg.replace(data=cfg.data or saved.data, preset=cfg.preset or saved.preset)
        for name in RESUME_FROZEN:
            if getattr(saved, name) != getattr(cfg, name):
                raise UserError(f"--resume: {name} was {getattr(saved, name)!r} in {run_dir}, now {getattr(cfg, name)!r}; "
                                "a resumed run keeps its model, context and seed (start a new --out instead)")
        start_ckpt = ckpt.latest_checkpoint(run_dir)
    elif run_dir.exists():
        if not force:
            raise UserError(f"--out {run_dir} already exists; pass --resume to continue it or --force to start over")
        if any(run_dir.iterdir()) and not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"--force: {run_dir} is not a training run directory; not deleting it")

    if not cfg.data:
        raise UserError("--data is required: a DATA_DIR from `tinystories prepare`")
    from .prepare import load_data_dir

    data = load_data_dir(cfg.data)
    tokenizer = data.tokenizer()
    if resume and (run_dir / TOKENIZER_FILE).is_file() and \
            Tokenizer.load(run_dir).tk.to_str() != tokenizer.tk.to_str():
        raise UserError(f"--data {cfg.data}: its tokenizer differs from the one {run_dir} was trained with; "
                        "give the DATA_DIR this run started on (or one prepared with the same tokenizer)")

    # -- no preset and only a time limit: pick the recipe for this budget on this machine (budget.py)
    budget_choice = None
    if not resume and budget_wanted(cfg):
        from .budget import plan
        cfg, budget_choice = _broadcast(dist_, plan(cfg, data, device, world=dist_.world,
                                                    say=None if dist_.main else (lambda line: None)))

    # -- the model config: preset + overrides, vocab from the data unless set explicitly
    preset = cfg.preset or DEFAULT_PRESET
    label = budget_choice["label"] if budget_choice else preset
    cfg = cfg.replace(preset=preset)  # saved resolved, so that --resume rebuilds the same model
    overrides = dict(cfg.model)
    overrides.setdefault("vocab_size", data.vocab_size)
    mcfg = preset_config(preset, **overrides)
    if data.vocab_size > mcfg.vocab_size:
        raise UserError(f"--data {cfg.data}: its tokenizer has {data.vocab_size} tokens but the model's vocab_size is "
                        f"{mcfg.vocab_size}; drop model.vocab_size or prepare the data with a smaller vocabulary")
    T = cfg.context or mcfg.context
    if T > mcfg.context:
        raise UserError(f"context {T} does not fit the model's {mcfg.context} positions; "
                        f"lower context or raise it with --set model.context={T}")
    windows = TokenWindows(data.train, T, cfg.seed)
    per_step = cfg.batch_size * cfg.grad_accum * dist_.world
    if windows.n < cfg.batch_size * dist_.world:
        raise UserError(f"--data {cfg.data}: train.bin has {len(data.train):,} tokens, fewer than one batch of "
                        f"{cfg.batch_size * dist_.world} x {T + 1}; lower batch_size or context, or prepare more data")
    tokens_per_step = per_step * T
    total_steps = _planned_steps(cfg, tokens_per_step)

    # -- speed settings
    if device.type == "cpu":
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif "OMP_NUM_THREADS" not in os.environ:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist_.world))
            torch.set_num_threads(max(1, physical_cores() // local_world))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = _broadcast(dist_, resolve_precision(cfg.precision, device))  # rank 0's probe decides for all
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and compile_pays(cfg, device, total_steps))

    # -- the model, then the run directory (rank 0 only, after every rank has passed the checks above).
    # A new run directory appears whole, already a loadable model directory (the initial weights).
    torch.manual_seed(cfg.seed)
    model = _build_model(mcfg)
    _barrier(dist_)
    if dist_.main:
        if not resume:
            with atomic_dir(run_dir, force=force) as tmp:
                save_model(tmp, model, tokenizer, extra={"training": {"step": 0, "tokens": 0}})
                atomic_write_json(tmp / CONFIG_FILE, cfg.to_dict())
        else:
            ckpt.clean_stale(run_dir)
            atomic_write_json(run_dir / CONFIG_FILE, cfg.to_dict())
    _barrier(dist_)

    # -- optimizer and state
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    step, samples, elapsed_before = 0, 0, 0.0
    torch.manual_seed(cfg.seed + 1 + dist_.rank)  # dropout streams: one per rank, fixed by the seed
    if start_ckpt is not None:
        weights, trainer_state, info = ckpt.read_checkpoint(start_ckpt)
        ckpt.load_weights(model, weights)
        optimizer.load_state_dict(trainer_state["optimizer"])
        if scaler is not None and trainer_state.get("scaler"):
            scaler.load_state_dict(trainer_state["scaler"])
        rng = trainer_state["rng"]
        if len(rng) == dist_.world:
            torch.set_rng_state(rng[dist_.rank]["torch"])
            if device.type == "cuda" and rng[dist_.rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rng[dist_.rank]["cuda"], device)
        step, samples, elapsed_before = info["step"], info["samples"], info["elapsed"]
    start_samples = samples
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if dist_.on:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    log = RunLog(run_dir, dist_.main, step if resume else None, cfg.tensorboard)
    n_params = raw_model.num_parameters()
    title = (f"{label} ({n_params / 1e6:.2f}M params), batch {per_step} x {T}, lr {cfg.lr:g}, "
             f"{device.type} {precision}")
    autocast_dtype = _AUTOCAST[precision]
    val_bytes = (data.meta.get("splits", {}).get("val") or {}).get("bytes")

    def evaluate(max_tokens: int | None) -> dict:
        if len(data.val) < 2:
            return {}
        res = stream_loss(raw_model, data.val, T, cfg.eval_batch_size or cfg.batch_size, max_tokens,
                          device=device, autocast_dtype=autocast_dtype)
        out = {"val_loss": res.mean, "val_tokens": res.tokens}
        if val_bytes:
            out["val_bpb"] = res.bits_per_byte(val_bytes, res.tokens / (len(data.val) - 1))
        return out

    def save(at_step: int) -> None:
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        rngs = _gather(dist_, rng)
        if dist_.main:
            trainer_state = {"optimizer": optimizer.state_dict(), "rng": rngs,
                             "scaler": scaler.state_dict() if scaler is not None else None}
            info = {"samples": samples, "tokens": samples * T, "elapsed": elapsed_before + (time.time() - t0),
                    "world_size": dist_.world, "device": str(device), "precision": precision,
                    "config": cfg.to_dict()}
            ckpt.write_checkpoint(run_dir, at_step, raw_model, trainer_state, info, keep=cfg.keep_checkpoints)
        _barrier(dist_)

    # Ctrl-C / SIGTERM: finish the step, save a checkpoint, stop. A second Ctrl-C stops at once.
    interrupted = {"flag": False}
    old_handlers = _install_stop_handlers(interrupted)

    bar = progress(total=total_steps, initial=step, desc="train", unit="step",
                   disable=None if dist_.main else True,
                   bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}]{postfix}")
    model.train()
    t0 = time.time()
    last_log_t, last_log_step = t0, step
    paused = paused_total = 0.0  # seconds spent on evals and checkpoints: not counted in tokens/s
    last_val: dict = {}
    stopped = None
    try:
        while True:
            elapsed = elapsed_before + (time.time() - t0)
            stopped = _stop_reason(cfg, step, samples * T, elapsed)
            if stopped:
                break
            frac = elapsed / cfg.max_time if cfg.max_time else None
            lr = lr_at(cfg, step, total_steps, frac)
            for g in optimizer.param_groups:
                g["lr"] = lr

            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                first = samples + (micro * dist_.world + dist_.rank) * cfg.batch_size
                x, y = windows.batch(first, cfg.batch_size)
                x, y = _to_device(x, device), _to_device(y, device)
                sync = contextlib.nullcontext() if not dist_.on or micro == cfg.grad_accum - 1 else model.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        loss = model(x, y) / cfg.grad_accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += loss.detach()
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))

            # One small all-reduce per step: the mean loss, rank 0's clock (so every rank follows the
            # same time-based schedule and stops together) and any rank's interrupt.
            stats = torch.tensor([loss_sum.item(), norm.item(), elapsed if dist_.main else 0.0,
                                  float(interrupted["flag"])], dtype=torch.float64)
            if dist_.on:
                import torch.distributed as dist
                dist.all_reduce(stats)
                stats[:2] /= dist_.world  # every rank holds the same averaged gradients
            step_loss, grad_norm = float(stats[0]), float(stats[1])
            if not math.isfinite(step_loss) or (scaler is None and not math.isfinite(grad_norm)):
                last = ckpt.latest_checkpoint(run_dir)
                where = (f"the last good checkpoint, {last}, is intact: lower lr (--set lr=...) and --resume"
                         if last else "no checkpoint had been written yet")
                what = "loss" if not math.isfinite(step_loss) else "gradient norm"
                raise TrainingDiverged(f"{what} became {step_loss if what == 'loss' else grad_norm} at step "
                                       f"{step + 1} (lr {lr:.3g}); training stopped and saved nothing more; {where}")
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples += per_step
            if stats[3] > 0:
                interrupted["flag"] = True

            # -- observe
            now = time.time()
            if step % cfg.log_every == 0 or step == 1:
                tps = (step - last_log_step) * tokens_per_step / max(now - last_log_t - paused, 1e-9)
                last_log_t, last_log_step, paused = now, step, 0.0
                log.write({"step": step, "tokens": samples * T, "elapsed": round(elapsed_before + now - t0, 3),
                           "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": round(tps, 1)})
                eta = _eta(cfg, step, samples * T, elapsed_before + now - t0, tps / tokens_per_step, tokens_per_step)
                bar.set_postfix_str(f"loss {step_loss:.3f} lr {lr:.2e} {tps:,.0f} tok/s ETA {eta}", refresh=False)
                if total_steps is None and cfg.max_time:
                    bar.total = step + int((cfg.max_time - (elapsed_before + now - t0)) * tps / tokens_per_step)
            bar.update(1)
            t_pause = time.time()
            if cfg.eval_every and step % cfg.eval_every == 0:
                if dist_.main:
                    last_val = evaluate(cfg.eval_tokens)
                    log.write({"step": step, "tokens": samples * T,
                               "elapsed": round(elapsed_before + time.time() - t0, 3), **last_val})
                    log.draw(title)
                _barrier(dist_)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save(step)
            paused += time.time() - t_pause
            paused_total += time.time() - t_pause
            if interrupted["flag"]:
                stopped = "interrupted"
                break
    finally:
        if total_steps is None:  # a time-bounded bar ends full
            bar.total = bar.n
        bar.close()
        _restore_handlers(old_handlers)

    # -- the end: checkpoint, final validation, plot, samples, summary
    t_end = time.time()
    save(step)
    train_time = elapsed_before + (t_end - t0)
    summary = {"run_dir": str(run_dir), "preset": label, "parameters": n_params, "steps": step,
               "tokens": samples * T, "time_s": round(train_time, 1), "ended_at": round(t_end, 3),
               # throughput of this session's training steps (evals and checkpoints excluded)
               "tokens_per_s": round((samples - start_samples) * T / max(t_end - t0 - paused_total, 1e-9), 1),
               "stopped": stopped,
               "device": str(device), "precision": precision, "threads": torch.get_num_threads(),
               "processes": dist_.world, "compile": use_compile}
    if budget_choice:
        summary["budget"] = budget_choice
    if dist_.main:
        final = evaluate(cfg.final_eval_tokens)
        if final:
            log.write({"step": step, "tokens": samples * T, "elapsed": round(train_time, 3), "final": True, **final})
        summary.update(final)
        log.draw(title)
        log.close()
        summary["samples"] = _samples(raw_model, tokenizer, cfg) if stopped != "interrupted" else []
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    _barrier(dist_)
    return summary


def _build_model(mcfg: ModelConfig):
    from .model import GPTNeo

    return GPTNeo(mcfg)


def _planned_steps(cfg: TrainConfig, tokens_per_step: int) -> int | None:
    """The run's length in steps when a step or token limit fixes it; None when only time does."""
    limits = []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.max_tokens is not None:
        limits.append(math.ceil(cfg.max_tokens / tokens_per_step))
    return min(limits) if limits else None


def _stop_reason(cfg: TrainConfig, step: int, tokens: int, elapsed: float) -> str | None:
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_tokens is not None and tokens >= cfg.max_tokens:
        return "max_tokens"
    if cfg.max_time is not None and elapsed >= cfg.max_time:
        return "max_time"
    return None


def _eta(cfg: TrainConfig, step: int, tokens: int, elapsed: float, steps_per_s: float, tokens_per_step: int) -> str:
    """Time to the nearest of the run's limits at the current speed."""
    left = []
    if steps_per_s > 0:
        if cfg.max_steps is not None:
            left.append((cfg.max_steps - step) / steps_per_s)
        if cfg.max_tokens is not None:
            left.append((cfg.max_tokens - tokens) / (steps_per_s * tokens_per_step))
    if cfg.max_time is not None:
        left.append(cfg.max_time - elapsed)
    return format_duration(max(0.0, min(left))) if left else "?"


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _barrier(d: Dist) -> None:
    if d.on:
        import torch.distributed as dist
        dist.barrier()


def _broadcast(d: Dist, obj):
    if not d.on:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(d: Dist, obj) -> list:
    """Every rank's `obj`, in rank order (RNG states for the checkpoint)."""
    if not d.on:
        return [obj]
    import torch.distributed as dist
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _install_stop_handlers(state: dict):
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if state["flag"]:
            raise KeyboardInterrupt
        state["flag"] = True
        print("\nstopping after this step (a checkpoint will be saved); press Ctrl-C again to abort",
              file=sys.stderr)

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(old) -> None:
    for s, h in (old or {}).items():
        signal.signal(s, h)


def _samples(model, tokenizer: Tokenizer, cfg: TrainConfig) -> list[str]:
    """A few stories from the trained model, for the summary (seeded: the same run gives the same ones)."""
    if not cfg.samples:
        return []
    was = model.training
    model.eval()
    try:
        from .generate import generate
    except ImportError:  # the generation module has not landed yet
        texts = _plain_samples(model, tokenizer, cfg)
    else:
        out = generate(model, tokenizer, [""], max_new_tokens=cfg.sample_tokens, num_samples=cfg.samples,
                       temperature=1.0, seed=cfg.seed)
        texts = [c.text for c in out[0]]
    model.train(was)
    return [t.split("<|endoftext|>")[0].strip() for t in texts]


@torch.no_grad()
def _plain_samples(model, tokenizer: Tokenizer, cfg: TrainConfig) -> list[str]:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    idx = torch.full((cfg.samples, 1), tokenizer.eot_id, dtype=torch.long, device=device)
    ctx = model.config.context
    for _ in range(cfg.sample_tokens):
        logits = model(idx[:, -ctx:], last_only=True)[:, -1].float()
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        idx = torch.cat([idx, nxt], dim=1)
    return [tokenizer.decode(row[1:].tolist()) for row in idx]
