"""TrainConfig: everything that defines a run, typed and validated, from recipes and `key=value` settings."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from typeguard import TypeCheckError, check_type

from ..errors import UserError
from ..model.config import ModelConfig
from ..runtime.console import parse_duration

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
    lr_schedule: str = "cosine"      # cosine | wsd | constant (all after warmup; see schedule.lr_at)
    cooldown_frac: float = 0.2       # wsd: the share of the run (steps, or the clock with max_time) that cools down
    optimizer: str = "adamw"         # adamw | muon (Muon for the blocks' matrices, AdamW for the rest; train/optim.py)
    muon_lr: float | None = None     # muon: its lr on AdamW's scale (match_rms_adamw); None = lr
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
    keep_best: bool = False          # the run's model is the weights with the lowest periodic validation loss,
                                     # not the last step's: a run that passes over small data many times can
                                     # start to memorise it in the cooldown (train/loop.py, keep_best_weights)
    checkpoint_every: int = 250      # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    tensorboard: bool = False        # also log to RUN_DIR/tensorboard (needs the tensorboard package)
    samples: int = 2                 # stories generated for the end-of-run summary
    sample_tokens: int = 200
    # -- provenance
    given: list[str] = field(default_factory=list)  # keys the user set (recipe, flags, --set, model.X): the
                                                    # budget planner keeps these even when equal to the default

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
        if not 0.0 <= self.cooldown_frac <= 1.0:
            bad("cooldown_frac", f"must be in [0, 1], got {self.cooldown_frac}")
        if self.muon_lr is not None and not (self.muon_lr > 0 and math.isfinite(self.muon_lr)):
            bad("muon_lr", f"must be a positive number, got {self.muon_lr}")
        for name, allowed in (("lr_schedule", ("cosine", "wsd", "constant")), ("optimizer", ("adamw", "muon")),
                              ("precision", ("auto", "bf16", "fp16", "fp32")),
                              ("compile", ("auto", "on", "off"))):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.keep_best and not self.eval_every:
            bad("keep_best", "needs periodic validation to choose from: set eval_every (steps between passes)")
        for key in self.model:
            if key not in _MODEL_FIELDS:
                raise UserError(_unknown_key(f"model.{key}", [f"model.{k}" for k in _MODEL_FIELDS], "train config"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "train config") -> TrainConfig:
        """Build from plain values (TOML, JSON, --set strings), converting and checking each one.

        The keys of `d` are the ones the user gave (`given`), unless `d` says which (a saved config)."""
        values: dict[str, Any] = {"given": sorted(_keys(d))} if "given" not in d else {}
        for key, value in d.items():
            if key == "given":
                values["given"] = sorted(set(value or ()))
            elif key == "model":
                if not isinstance(value, dict):
                    raise UserError(f"{where}: model must be a table of model fields, got {value!r}")
                values["model"] = {k: _coerce_model(k, v, where) for k, v in value.items()}
            elif key in _TRAIN_FIELDS:
                values[key] = _coerce(key, value, _TRAIN_HINTS[key], where)
            else:
                raise UserError(_unknown_key(key, [*_TRAIN_FIELDS, *(f"model.{k}" for k in _MODEL_FIELDS)], where))
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
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


def _keys(d: dict) -> set[str]:
    return {k for k in d if k != "model"} | {f"model.{k}" for k in (d.get("model") or {})}


def _expected(hint: Any) -> str:
    """How a one-line error names a field's type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """Convert a TOML/JSON/--set value to the field's type, or raise a UserError that names the key.

    typeguard checks the type; the conversions are the ones text needs: a string is read as a TOML value
    ("5e6", "true"), "none" is None for an optional field, a whole float is an int, an int is a float, and
    max_time takes durations ("20m")."""
    optional = type(None) in typing.get_args(hint)
    if isinstance(value, str):
        if optional and value.strip().lower() in ("none", "null", ""):
            return None
        if name == "max_time":
            return parse_duration(value, option=f"{where}: max_time")
        if hint is bool and value.strip().lower() in _WORDS:
            value = _WORDS[value.strip().lower()]
        elif hint is not str and str not in typing.get_args(hint):
            value = parse_value(value.strip())
    if name == "compile" and isinstance(value, bool):
        return "on" if value else "off"
    if not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer() and _accepts(hint, int) and not _accepts(hint, float):
            value = int(value)
        elif isinstance(value, int) and _accepts(hint, float) and not _accepts(hint, int):
            value = float(value)
    if isinstance(value, bool) and name == "max_time":
        raise UserError(f"{where}: {name} must be a duration, got {value!r}")
    try:
        if isinstance(value, bool) and not _accepts(hint, bool):  # typeguard lets a bool pass as an int
            raise TypeCheckError("bool")
        check_type(value, hint)
    except TypeCheckError:
        raise UserError(f"{where}: {name} must be {_expected(hint)}, got {value!r}") from None
    return value


_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _accepts(hint: Any, t: type) -> bool:
    return hint is t or t in typing.get_args(hint)


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
    """The CLI's layering: base (defaults, or the saved config on --resume) <- recipe <- options <- --set.

    Options that are None were not given. Every key the recipe, the options and --set name is recorded
    in `given` (with the base's), so that the budget planner keeps it even when it equals the default."""
    d = dict(base or {})
    given = set((base or {}).get("given") or ())
    if recipe:
        r = load_recipe(recipe)
        d.update({k: v for k, v in r.items() if k != "model"})
        d["model"] = {**(d.get("model") or {}), **r.get("model", {})}
        given |= _keys(r)
    options = {k: v for k, v in options.items() if v is not None}
    d.update(options)
    d = apply_sets(d, list(sets))
    given |= set(options) | _keys(apply_sets({}, list(sets)))
    return TrainConfig.from_dict({**d, "given": sorted(given)}, where="--set" if sets else "train config")


