"""Training on one machine (CPU, one GPU, or several GPUs through torchrun): fast, resumable, observable.

    cfg = TrainConfig(data="data/ts", out="runs/1M", preset="1M", max_time=600)
    summary = train(cfg)

A run goes through named stages that share one `Run` state, each a function below, in order:
  open_run       the run directory: new, replaced or resumed (checked on every rank before anyone writes),
                 locked against a second `train` on the same --out
  load_data      the DATA_DIR and its tokenizer
  plan           the budget pick (no preset, only a time limit), the model config, batches, run length
  setup_machine  threads, precision, compile
  build          the model, the run directory on disk, optimizer, and the state of a resumed checkpoint
  run_steps      the loop: one optimizer step at a time, observed, evaluated and checkpointed on schedule
  finish         the last checkpoint, the kept weights (keep_best), the final validation, samples, the summary
Batches are `batches.py`'s, the schedule `schedule.py`'s, checkpoint files `checkpoint.py`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.tokenizer import TOKENIZER_FILE, Tokenizer
from ..errors import UserError
from ..evaluate.metrics import stream_loss
from ..generate.sampling import generate
from ..model.config import ModelConfig, preset_config
from ..model.modeldir import save_model
from ..runtime.console import format_duration, progress
from ..runtime.device import AUTOCAST, keep_freed_memory, physical_cores
from ..runtime.distributed import Dist, barrier, broadcast, gather, init_distributed
from ..runtime.files import atomic_dir, atomic_write_json, check_apart
from . import checkpoint as ckpt
from .batches import TokenWindows
from .budget import wanted as budget_wanted
from .config import CONFIG_FILE, DEFAULT_PRESET, RESUME_FROZEN, SUMMARY_FILE, TrainConfig
from .lock import RunLock
from .optim import make_optimizer
from .precision import choose_precision
from .runlog import RunLog
from .schedule import lr_at

# torch.compile takes about a minute before the first step; it must have time to pay that back.
COMPILE_MIN_STEPS = 500
COMPILE_MIN_SECONDS = 300


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run stopped before the bad step touched the weights."""


@dataclass
class Run:
    """The state every stage of one training run reads and writes."""
    cfg: TrainConfig
    dist: Dist
    device: torch.device
    run_dir: Path
    resume: bool
    start_ckpt: Path | None = None
    data: Any = None                     # prepare.DataDir
    tokenizer: Tokenizer | None = None
    budget_choice: dict | None = None
    label: str = ""
    mcfg: ModelConfig | None = None
    context: int = 0                     # training sequence length T
    windows: TokenWindows | None = None
    per_step: int = 0                    # sequences per optimizer step, all ranks
    total_steps: int | None = None
    precision: str = "fp32"
    use_compile: bool = False
    model: Any = None                    # what the loop calls: maybe compiled, maybe DDP-wrapped
    raw_model: Any = None                # the GPTNeo inside
    optimizer: Any = None
    scaler: Any = None
    step: int = 0
    samples: int = 0                     # sequences consumed by the whole run
    start_samples: int = 0
    elapsed_before: float = 0.0          # training seconds of earlier sessions (resume)
    t0: float = field(default_factory=time.time)  # this session's clock starts before any checkpoint can be written
    paused_total: float = 0.0            # seconds spent on evals and checkpoints: not counted in tokens/s
    stopped: str | None = None
    log: RunLog | None = None
    best: dict | None = None             # keep_best: {"step", "tokens", "val_loss"} of the best periodic validation

    @property
    def tokens_per_step(self) -> int:
        return self.per_step * self.context

    @property
    def tokens(self) -> int:
        return self.samples * self.context

    def elapsed(self, now: float | None = None) -> float:
        return self.elapsed_before + ((now or time.time()) - self.t0)

    @property
    def autocast_dtype(self):
        return AUTOCAST[self.precision]


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Train a model as `cfg` says; returns the summary (also in RUN_DIR/summary.json).

    `resume` continues RUN_DIR from its newest checkpoint (the same run: with the same settings the
    losses are exactly those of an uninterrupted run). Without it, RUN_DIR must not exist, unless
    `force`, which replaces an earlier run directory.
    """
    dist_, device = init_distributed(cfg.device)
    old_threads = torch.get_num_threads()
    if device.type == "cpu":
        keep_freed_memory()  # before the budget probe, so that it times steps as the run will take them
    try:
        if not cfg.out:
            raise UserError("--out is required: the run directory to write")
        with RunLock(cfg.out, enabled=dist_.main):  # before any check of the directory: a second run is told so
            run = open_run(cfg, dist_, device, resume, force)
            load_data(run)
            plan(run)
            setup_machine(run)
            build(run, force)
            run_steps(run)
            return finish(run)
    finally:
        torch.set_num_threads(old_threads)
        if dist_.on:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


# ===================================================================== stages

def open_run(cfg: TrainConfig, dist_: Dist, device: torch.device, resume: bool, force: bool) -> Run:
    """Check the run directory against --resume/--force before anything is built."""
    if cfg.max_steps is None and cfg.max_tokens is None and cfg.max_time is None:
        raise UserError("say when to stop: --max-steps N, --max-tokens N or --max-time 20m (or set one in --config)")
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a run directory; choose another --out")
    if cfg.data:
        check_apart(run_dir, [cfg.data])  # before any --force decision: never replace the data the run reads
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
        if start_ckpt is None:
            # Starting again from step 0 would silently throw away what the user asked to continue.
            raise UserError(f"--resume: {run_dir} has no checkpoint to continue from ({ckpt.CHECKPOINTS}/ is empty or "
                            "gone); start the run again with --force")
    elif run_dir.exists():
        if not force:
            raise UserError(f"--out {run_dir} already exists; pass --resume to continue it or --force to start over")
        if any(run_dir.iterdir()) and not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"--force: {run_dir} is not a training run directory; not deleting it")
    if not cfg.data:
        raise UserError("--data is required: a DATA_DIR from `tinystories prepare`")
    check_apart(run_dir, [cfg.data])  # a resumed run's data comes from its saved config
    return Run(cfg=cfg, dist=dist_, device=device, run_dir=run_dir, resume=resume, start_ckpt=start_ckpt)


def load_data(run: Run) -> None:
    from ..data.prepare import load_data_dir

    run.data = load_data_dir(run.cfg.data)
    run.tokenizer = run.data.tokenizer()
    if run.resume and (run.run_dir / TOKENIZER_FILE).is_file() and \
            Tokenizer.load(run.run_dir).tk.to_str() != run.tokenizer.tk.to_str():
        raise UserError(f"--data {run.cfg.data}: its tokenizer differs from the one {run.run_dir} was trained with; "
                        "give the DATA_DIR this run started on (or one prepared with the same tokenizer)")


def plan(run: Run) -> None:
    """The recipe (picked for the time budget when there is no preset), the model config and the batches."""
    cfg, data, dist_ = run.cfg, run.data, run.dist
    if not run.resume and budget_wanted(cfg):
        from .budget import plan as budget_plan
        cfg, run.budget_choice = broadcast(dist_, budget_plan(cfg, data, run.device, world=dist_.world,
                                                              say=None if dist_.main else (lambda line: None)))
    preset = cfg.preset or DEFAULT_PRESET
    run.label = run.budget_choice["label"] if run.budget_choice else preset
    cfg = run.cfg = cfg.replace(preset=preset)  # saved resolved, so that --resume rebuilds the same model
    overrides = dict(cfg.model)
    overrides.setdefault("vocab_size", data.vocab_size)
    mcfg = run.mcfg = preset_config(preset, **overrides)
    if data.vocab_size > mcfg.vocab_size:
        raise UserError(f"--data {cfg.data}: its tokenizer has {data.vocab_size} tokens but the model's vocab_size is "
                        f"{mcfg.vocab_size}; drop model.vocab_size or prepare the data with a smaller vocabulary")
    T = run.context = cfg.context or mcfg.context
    if T > mcfg.context:
        raise UserError(f"context {T} does not fit the model's {mcfg.context} positions; "
                        f"lower context or raise it with --set model.context={T}")
    run.windows = TokenWindows(data.train, T, cfg.seed)
    run.per_step = cfg.batch_size * cfg.grad_accum * dist_.world
    if run.windows.n < cfg.batch_size * dist_.world:
        raise UserError(f"--data {cfg.data}: train.bin has {len(data.train):,} tokens, fewer than one batch of "
                        f"{cfg.batch_size * dist_.world} x {T + 1}; lower batch_size or context, or prepare more data")
    run.total_steps = planned_steps(cfg, run.tokens_per_step)


def setup_machine(run: Run) -> None:
    cfg, device = run.cfg, run.device
    if device.type == "cpu":
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif "OMP_NUM_THREADS" not in os.environ:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", run.dist.world))
            torch.set_num_threads(max(1, physical_cores() // local_world))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if run.budget_choice and cfg.precision == "auto":
        # The budget planner already decided (and timed its probe in it); timing this shape again here would
        # spend seconds after the deadline was set.
        run.precision = run.budget_choice["probe"]["precision"]
    else:
        # auto on a CPU times this model in fp32 and bf16 (cached per machine and shape); rank 0 decides for all
        mine = choose_precision(cfg.precision, run.mcfg, cfg.batch_size, run.context, device) if run.dist.main else None
        run.precision = broadcast(run.dist, mine.precision if mine else None)
    run.use_compile = cfg.compile == "on" or (cfg.compile == "auto" and compile_pays(cfg, device, run.total_steps))


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


def build(run: Run, force: bool) -> None:
    """The model, then the run directory (rank 0 only, after every rank has passed the checks above),
    then the optimizer, restored from the checkpoint when resuming. A new run directory appears whole,
    already a loadable model directory (the initial weights)."""
    from ..model.gpt_neo import GPTNeo

    cfg, dist_ = run.cfg, run.dist
    torch.manual_seed(cfg.seed)
    run.raw_model = model = GPTNeo(run.mcfg)
    barrier(dist_)
    if dist_.main and not run.resume:
        with atomic_dir(run.run_dir, force=force) as tmp:
            save_model(tmp, model, run.tokenizer, extra={"training": {"step": 0, "tokens": 0}})
            atomic_write_json(tmp / CONFIG_FILE, cfg.to_dict())
    barrier(dist_)
    model.to(run.device)
    run.optimizer = make_optimizer(model, cfg, run.device)
    run.scaler = torch.amp.GradScaler("cuda") if run.precision == "fp16" else None
    torch.manual_seed(cfg.seed + 1 + dist_.rank)  # dropout streams: one per rank, fixed by the seed
    if run.start_ckpt is not None:
        _restore(run)
    run.start_samples = run.samples
    run.log = RunLog(run.run_dir, dist_.main, run.step if run.resume else None, cfg.tensorboard)
    if dist_.main and run.resume:
        # Only now, with the checkpoint and the log read: a resume that fails on them leaves the run as it was.
        ckpt.clean_stale(run.run_dir)
        atomic_write_json(run.run_dir / CONFIG_FILE, cfg.to_dict())
    barrier(dist_)
    if run.use_compile:
        model = torch.compile(model)
    if dist_.on:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.model = model


def _restore(run: Run) -> None:
    weights, trainer_state, info = ckpt.read_checkpoint(run.start_ckpt)
    ckpt.load_weights(run.raw_model, weights)
    run.optimizer.load_state_dict(trainer_state["optimizer"])
    if run.scaler is not None and trainer_state.get("scaler"):
        run.scaler.load_state_dict(trainer_state["scaler"])
    rng, rank = trainer_state["rng"], run.dist.rank
    if len(rng) == run.dist.world:
        torch.set_rng_state(rng[rank]["torch"])
        if run.device.type == "cuda" and rng[rank].get("cuda") is not None:
            torch.cuda.set_rng_state(rng[rank]["cuda"], run.device)
    run.step, run.samples, run.elapsed_before = info["step"], info["samples"], info["elapsed"]
    run.best = info.get("best")


def run_steps(run: Run) -> None:
    """Optimizer steps until a limit or an interrupt. Ctrl-C / SIGTERM: finish the step, save a checkpoint,
    stop; a second Ctrl-C stops at once."""
    interrupted = {"flag": False}
    old_handlers = _install_stop_handlers(interrupted)
    bar = progress(total=run.total_steps, initial=run.step, desc="train", unit="step",
                   disable=None if run.dist.main else True,
                   bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}]{postfix}")
    run.model.train()
    run.t0 = time.time()
    meter = _Meter(run.t0, run.step)
    try:
        while True:
            elapsed = run.elapsed()
            run.stopped = stop_reason(run.cfg, run.step, run.tokens, elapsed)
            if run.stopped:
                break
            lr = lr_at(run.cfg, run.step, run.total_steps, elapsed / run.cfg.max_time if run.cfg.max_time else None)
            step_loss, grad_norm, stop_asked = train_step(run, lr, elapsed, interrupted["flag"])
            interrupted["flag"] |= stop_asked
            _observe(run, meter, bar, step_loss, grad_norm, lr)
            t_pause = time.time()
            _evaluate_and_checkpoint(run)
            meter.paused += time.time() - t_pause
            run.paused_total += time.time() - t_pause
            if interrupted["flag"]:
                run.stopped = "interrupted"
                break
    finally:
        if run.total_steps is None:  # a time-bounded bar ends full
            bar.total = bar.n
        bar.close()
        _restore_handlers(old_handlers)


def train_step(run: Run, lr: float, elapsed: float, interrupted: bool) -> tuple[float, float, bool]:
    """One optimizer step over grad_accum micro-batches: (mean loss, gradient norm, any rank asked to stop).
    A non-finite loss or gradient stops the run before the step touches the weights."""
    cfg, dist_, scaler = run.cfg, run.dist, run.scaler
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    loss_sum = torch.zeros((), device=run.device)
    dtype = run.autocast_dtype
    for micro in range(cfg.grad_accum):
        first = run.samples + (micro * dist_.world + dist_.rank) * cfg.batch_size
        x, y = run.windows.batch(first, cfg.batch_size)
        x, y = _to_device(x, run.device), _to_device(y, run.device)
        sync = contextlib.nullcontext() if not dist_.on or micro == cfg.grad_accum - 1 else run.model.no_sync()
        with sync:
            with torch.autocast(run.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = run.model(x, y) / cfg.grad_accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += loss.detach()
    if scaler is not None:
        scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))

    # One small all-reduce per step: the mean loss, rank 0's clock (so every rank follows the
    # same time-based schedule and stops together) and any rank's interrupt.
    stats = torch.tensor([loss_sum.item(), norm.item(), elapsed if dist_.main else 0.0, float(interrupted)],
                         dtype=torch.float64)
    if dist_.on:
        import torch.distributed as dist
        dist.all_reduce(stats)
        stats[:2] /= dist_.world  # every rank holds the same averaged gradients
    step_loss, grad_norm = float(stats[0]), float(stats[1])
    if not math.isfinite(step_loss) or (scaler is None and not math.isfinite(grad_norm)):
        last = ckpt.latest_checkpoint(run.run_dir)
        where = (f"the last good checkpoint, {last}, is intact: lower lr (--set lr=...) and --resume"
                 if last else "no checkpoint had been written yet")
        what = "loss" if not math.isfinite(step_loss) else "gradient norm"
        raise TrainingDiverged(f"{what} became {step_loss if what == 'loss' else grad_norm} at step "
                               f"{run.step + 1} (lr {lr:.3g}); training stopped and saved nothing more; {where}")
    if scaler is not None:
        scaler.step(run.optimizer)
        scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.samples += run.per_step
    return step_loss, grad_norm, bool(stats[3] > 0)


@dataclass
class _Meter:
    """Throughput between log lines, net of the time spent evaluating and checkpointing."""
    last_t: float
    last_step: int
    paused: float = 0.0


def _observe(run: Run, meter: _Meter, bar, step_loss: float, grad_norm: float, lr: float) -> None:
    cfg, now = run.cfg, time.time()
    if run.step % cfg.log_every == 0 or run.step == 1:
        tps = (run.step - meter.last_step) * run.tokens_per_step / max(now - meter.last_t - meter.paused, 1e-9)
        meter.last_t, meter.last_step, meter.paused = now, run.step, 0.0
        run.log.write({"step": run.step, "tokens": run.tokens, "elapsed": round(run.elapsed(now), 3),
                       "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": round(tps, 1)})
        eta = _eta(cfg, run.step, run.tokens, run.elapsed(now), tps / run.tokens_per_step, run.tokens_per_step)
        bar.set_postfix_str(f"loss {step_loss:.3f} lr {lr:.2e} {tps:,.0f} tok/s ETA {eta}", refresh=False)
        if run.total_steps is None and cfg.max_time:
            bar.total = run.step + int((cfg.max_time - run.elapsed(now)) * tps / run.tokens_per_step)
    bar.update(1)


def _evaluate_and_checkpoint(run: Run) -> None:
    cfg = run.cfg
    if cfg.eval_every and run.step % cfg.eval_every == 0:
        if run.dist.main:
            val = evaluate(run, cfg.eval_tokens)
            run.log.write({"step": run.step, "tokens": run.tokens, "elapsed": round(run.elapsed(), 3), **val})
            if cfg.keep_best and val and (run.best is None or val["val_loss"] < run.best["val_loss"]):
                run.best = {"step": run.step, "tokens": run.tokens, "val_loss": val["val_loss"]}
                ckpt.write_best(run.run_dir, run.raw_model, run.step, val["val_loss"])
            run.log.draw(_title(run))
        barrier(run.dist)
    if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
        save_checkpoint(run)


def evaluate(run: Run, max_tokens: int | None) -> dict:
    """Validation loss (and bits per byte when the data knows its bytes) on up to `max_tokens` of val.bin."""
    val = run.data.val
    if len(val) < 2:
        return {}
    res = stream_loss(run.raw_model, val, run.context, run.cfg.eval_batch_size or run.cfg.batch_size, max_tokens,
                      device=run.device, autocast_dtype=run.autocast_dtype)
    out = {"val_loss": res.mean, "val_tokens": res.tokens}
    val_bytes = (run.data.meta.get("splits", {}).get("val") or {}).get("bytes")
    if val_bytes:
        out["val_bpb"] = res.bits_per_byte(val_bytes, res.tokens / (len(val) - 1))
    return out


def save_checkpoint(run: Run) -> None:
    """A checkpoint of this step on rank 0 (every rank's RNG state in it); never of non-finite weights."""
    dev = run.device
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
    rngs = gather(run.dist, rng)
    if run.dist.main:
        bad = [n for n, p in run.raw_model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # e.g. an fp16 step the scaler let through: the last good checkpoint must stay the model
            raise TrainingDiverged(f"weights became non-finite ({bad[0]}) at step {run.step}; nothing was saved; "
                                   "lower lr (--set lr=...) and --resume from the last checkpoint")
        trainer_state = {"optimizer": run.optimizer.state_dict(), "rng": rngs,
                         "scaler": run.scaler.state_dict() if run.scaler is not None else None}
        info = {"samples": run.samples, "tokens": run.tokens, "elapsed": run.elapsed(),
                "world_size": run.dist.world, "device": str(dev), "precision": run.precision, "config": run.cfg.to_dict()}
        if run.best is not None:
            info["best"] = run.best
        ckpt.write_checkpoint(run.run_dir, run.step, run.raw_model, trainer_state, info, keep=run.cfg.keep_checkpoints)
    barrier(run.dist)


def finish(run: Run) -> dict:
    """The end: checkpoint, final validation, plot, samples, summary."""
    t_end = time.time()
    save_checkpoint(run)
    train_time = run.elapsed(t_end)
    summary = {"run_dir": str(run.run_dir), "preset": run.label, "parameters": run.raw_model.num_parameters(),
               "steps": run.step, "tokens": run.tokens, "time_s": round(train_time, 1), "ended_at": round(t_end, 3),
               # throughput of this session's training steps (evals and checkpoints excluded)
               "tokens_per_s": round((run.samples - run.start_samples) * run.context
                                     / max(t_end - run.t0 - run.paused_total, 1e-9), 1),
               "stopped": run.stopped, "device": str(run.device), "precision": run.precision,
               "threads": torch.get_num_threads(), "processes": run.dist.world, "compile": run.use_compile}
    if run.budget_choice:
        summary["budget"] = run.budget_choice
    if run.dist.main:
        if run.cfg.keep_best:
            summary["kept"] = keep_best_weights(run)
        final = evaluate(run, run.cfg.final_eval_tokens)
        if final:
            run.log.write({"step": run.step, "tokens": run.tokens, "elapsed": round(train_time, 3), "final": True, **final})
        summary.update(final)
        run.log.draw(_title(run))
        run.log.close()
        summary["samples"] = _samples(run.raw_model, run.tokenizer, run.cfg) if run.stopped != "interrupted" else []
        atomic_write_json(run.run_dir / SUMMARY_FILE, summary)
    barrier(run.dist)
    return summary


def keep_best_weights(run: Run) -> dict:
    """keep_best: make the run's model the weights of its best periodic validation, when the last step's
    weights score worse on the same validation tokens. The last checkpoint keeps the last step's weights,
    so `--resume` continues the run where it stopped.

    Why: a run that passes over small data many times fits the training stories in its cooldown, when
    the learning rate is low, and its held-out loss can turn up before the end. Measured: a 60-minute run on
    the shared 1.47M-token files (256 x 4, 13 passes) ended with a training loss of 1.24 against 2.06 held
    out; its best periodic pass was step 9,306's (2.031 nats), its last step 9,429 scored 2.056 on the same
    16,384 tokens. The selection sees only those tokens, so it is a choice among a few dozen candidates,
    not a fit to the validation set."""
    best = run.best
    if best is not None and best["step"] == run.step:  # the last step's periodic pass was the best: no second pass
        return {**best, "last_val_loss": best["val_loss"]}
    last = evaluate(run, run.cfg.eval_tokens)
    if not last or best is None or last["val_loss"] <= best["val_loss"]:
        return {"step": run.step, "tokens": run.tokens, "val_loss": last.get("val_loss"), "last_val_loss": last.get("val_loss")}
    ckpt.load_weights(run.raw_model, ckpt.read_best(run.run_dir))
    save_model(run.run_dir, run.raw_model, extra={"training": {"step": best["step"], "tokens": best["tokens"],
                                                               "kept_best_of": run.step}})
    print(f"keep_best: the model is step {best['step']:,}'s (validation loss {best['val_loss']:.4f}), not the last "
          f"step's ({last['val_loss']:.4f} at step {run.step:,}); the last weights stay in "
          f"{ckpt.latest_checkpoint(run.run_dir)}", file=sys.stderr)
    return {**best, "last_val_loss": last["val_loss"]}


# ===================================================================== helpers

def _title(run: Run) -> str:
    return (f"{run.label} ({run.raw_model.num_parameters() / 1e6:.2f}M params), batch {run.per_step} x {run.context}, "
            f"lr {run.cfg.lr:g}, {run.device.type} {run.precision}")


def planned_steps(cfg: TrainConfig, tokens_per_step: int) -> int | None:
    """The run's length in steps when a step or token limit fixes it; None when only time does."""
    limits = []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.max_tokens is not None:
        limits.append(math.ceil(cfg.max_tokens / tokens_per_step))
    return min(limits) if limits else None


def stop_reason(cfg: TrainConfig, step: int, tokens: int, elapsed: float) -> str | None:
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
    out = generate(model, tokenizer, [""], max_new_tokens=cfg.sample_tokens, num_samples=cfg.samples,
                   temperature=1.0, seed=cfg.seed)
    model.train(was)
    return [c.text.split("<|endoftext|>")[0].strip() for c in out[0]]
