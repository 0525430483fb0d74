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
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from ..data.tokenizer import TOKENIZER_FILE, Tokenizer
from ..errors import UserError
from ..evaluate.metrics import stream_loss
from ..model.config import ModelConfig, preset_config
from ..model.modeldir import save_model
from ..runtime.console import format_duration, progress
from ..runtime.device import AUTOCAST, physical_cores, resolve_precision
from ..runtime.distributed import Dist, barrier, broadcast, gather, init_distributed
from ..runtime.files import atomic_dir, atomic_write_json
from . import checkpoint as ckpt
from .batches import TokenWindows
from .budget import wanted as budget_wanted
from .config import (
    CONFIG_FILE,
    DEFAULT_PRESET,
    RESUME_FROZEN,
    SUMMARY_FILE,
    TrainConfig,
)
from .optim import make_optimizer
from .runlog import RunLog
from .schedule import lr_at

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


# ===================================================================== training

class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run stopped before the bad step touched the weights."""


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Train a model as `cfg` says; returns the summary (also in RUN_DIR/summary.json).

    `resume` continues RUN_DIR from its newest checkpoint (the same run: with the same settings the
    losses are exactly those of an uninterrupted run). Without it, RUN_DIR must not exist, unless
    `force`, which replaces an earlier run directory.
    """
    dist_, device = init_distributed(cfg.device)
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
    from ..data.prepare import load_data_dir

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
        cfg, budget_choice = broadcast(dist_, plan(cfg, data, device, world=dist_.world,
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
    precision = broadcast(dist_, resolve_precision(cfg.precision, device))  # rank 0's probe decides for all
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and compile_pays(cfg, device, total_steps))

    # -- the model, then the run directory (rank 0 only, after every rank has passed the checks above).
    # A new run directory appears whole, already a loadable model directory (the initial weights).
    torch.manual_seed(cfg.seed)
    model = _build_model(mcfg)
    barrier(dist_)
    if dist_.main:
        if not resume:
            with atomic_dir(run_dir, force=force) as tmp:
                save_model(tmp, model, tokenizer, extra={"training": {"step": 0, "tokens": 0}})
                atomic_write_json(tmp / CONFIG_FILE, cfg.to_dict())
        else:
            ckpt.clean_stale(run_dir)
            atomic_write_json(run_dir / CONFIG_FILE, cfg.to_dict())
    barrier(dist_)

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
    autocast_dtype = AUTOCAST[precision]
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
        rngs = gather(dist_, rng)
        if dist_.main:
            trainer_state = {"optimizer": optimizer.state_dict(), "rng": rngs,
                             "scaler": scaler.state_dict() if scaler is not None else None}
            info = {"samples": samples, "tokens": samples * T, "elapsed": elapsed_before + (time.time() - t0),
                    "world_size": dist_.world, "device": str(device), "precision": precision,
                    "config": cfg.to_dict()}
            ckpt.write_checkpoint(run_dir, at_step, raw_model, trainer_state, info, keep=cfg.keep_checkpoints)
        barrier(dist_)

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
                barrier(dist_)
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
    barrier(dist_)
    return summary


def _build_model(mcfg: ModelConfig):
    from ..model.gpt_neo import GPTNeo

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
        from ..generate.sampling import generate
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


