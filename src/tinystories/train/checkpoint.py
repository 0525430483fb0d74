"""Training checkpoints inside a run directory, written so that a crash never leaves a broken one.

RUN_DIR/checkpoints/step-00001000/ holds
  model.safetensors   fp32 weights (the master copy)
  trainer.pt          optimizer (and grad scaler) state, the RNG state of every rank
  state.json          step, samples and tokens seen, elapsed time, the TrainConfig: readable by eye

Each checkpoint directory is built in a hidden temporary sibling, fsynced, and renamed into place
(`utils.atomic_dir`), so a `step-*` directory either exists whole or not at all. The newest one is
then copied to the top of RUN_DIR (model.safetensors + config.json, each replaced atomically), which
keeps RUN_DIR a model directory that every command loads. Old checkpoints are renamed away before
they are deleted, so a kill during pruning cannot leave a half-deleted `step-*` directory either.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from ..model.modeldir import WEIGHTS_FILE, model_config, save_model
from ..runtime.files import atomic_dir

CHECKPOINTS = "checkpoints"
BEST_FILE = "best.safetensors"   # keep_best: the weights of the best periodic validation so far
STATE_FILE = "state.json"
TRAINER_FILE = "trainer.pt"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first. Temporary and trashed directories are hidden."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def write_checkpoint(run_dir: str | Path, step: int, model, trainer_state: dict, info: dict,
                     keep: int = 2) -> Path:
    """Save a complete checkpoint for `step`, refresh the top-level model files, keep the newest `keep`.

    `trainer_state` (tensors and plain data) goes to trainer.pt, `info` (JSON) to state.json.
    """
    from safetensors.torch import save

    run_dir = Path(run_dir)
    path = checkpoint_dir(run_dir, step)
    (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    weights = _weights(model)
    if not path.exists():  # the final checkpoint can fall on a periodic one
        with atomic_dir(path) as tmp:
            (tmp / WEIGHTS_FILE).write_bytes(save(weights, metadata={"format": "tinystories-model"}))
            torch.save(trainer_state, tmp / TRAINER_FILE)
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, **info}, indent=2) + "\n")
    # The run directory's own model files follow the newest checkpoint.
    save_model(run_dir, model, extra={"training": {k: info[k] for k in ("step", "tokens") if k in info}})
    prune_checkpoints(run_dir, keep)
    return path


def write_best(run_dir: str | Path, model, step: int, val_loss: float) -> None:
    """keep_best: RUN_DIR/checkpoints/best.safetensors, the weights at `step`, replaced atomically. Not a
    `step-*` checkpoint (no optimizer state), so pruning and `--resume` never take it for one."""
    from safetensors.torch import save

    from ..runtime.files import atomic_write_bytes

    (Path(run_dir) / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(run_dir) / CHECKPOINTS / BEST_FILE,
                       save(_weights(model), metadata={"format": "tinystories-model", "step": str(step),
                                                       "val_loss": repr(val_loss)}))


def read_best(run_dir: str | Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run_dir) / CHECKPOINTS / BEST_FILE
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: unreadable ({str(e).splitlines()[0]}); the run's last weights are in "
                        f"{latest_checkpoint(run_dir)}") from None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    found = list_checkpoints(run_dir)
    for _, p in found[:max(0, len(found) - keep)]:
        trash = p.with_name(f".{p.name}.trash")
        p.rename(trash)  # atomic: the checkpoint disappears whole
        shutil.rmtree(trash, ignore_errors=True)


def clean_stale(run_dir: str | Path) -> None:
    """Remove what a killed writer left behind: temporary and half-deleted checkpoint directories,
    temporary files of atomic writes. Only names this package creates are touched."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-") and (p.name.endswith(".tmp") or p.name.endswith(".trash")):
                shutil.rmtree(p, ignore_errors=True)
    for p in run_dir.glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """(weights state_dict, trainer state, info) from one checkpoint directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
        trainer = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
        info = json.loads((path / STATE_FILE).read_text())
    except (SafetensorError, OSError, RuntimeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]}); "
                        "delete it to resume from the one before") from None
    return weights, trainer, info


def load_weights(model, weights: dict) -> None:
    """Load checkpoint weights into a bare model (tied lm_head restored from the embedding)."""
    if model_config(model).tie_embeddings and "lm_head.weight" not in weights:
        weights = {**weights, "lm_head.weight": weights["wte.weight"]}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("rope_")]
    assert not missing and not unexpected, f"checkpoint does not fit the model: {missing[:3]} {unexpected[:3]}"


def _weights(model) -> dict:
    from ..model.modeldir import _unwrap

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in _unwrap(model).state_dict().items()}
    if model_config(model).tie_embeddings:
        state.pop("lm_head.weight", None)
    return state
