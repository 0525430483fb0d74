"""The model directory: config.json + model.safetensors + tokenizer files, self-contained.

A training run directory is a model directory with more in it (optimizer state, metrics),
so every command that takes a model takes a run too. A `transformers` GPT-Neo directory
(config.json with model_type gpt_neo) loads as well, through `hf.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import UserError
from .model import GPTNeo
from .tokenizer import Tokenizer
from .utils import atomic_write_bytes, atomic_write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "tinystories-model"
FORMAT_VERSION = 1


def save_model(directory: str | Path, model: GPTNeo, tokenizer: Tokenizer | None = None,
               extra: dict | None = None) -> None:
    """Write config, weights (atomically, file by file) and tokenizer into `directory`."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in _unwrap(model).state_dict().items()}
    if model_config(model).tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as wte.weight
    atomic_write_bytes(directory / WEIGHTS_FILE, save(state, metadata={"format": FORMAT}))
    if tokenizer is not None:
        tokenizer.save(directory)
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_config(model).to_dict()}
    if extra:
        cfg.update(extra)
    atomic_write_json(directory / CONFIG_FILE, cfg)


def is_model_dir(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


def read_config(directory: str | Path) -> tuple[str, dict]:
    """('ours' | 'hf', parsed config.json), or a UserError naming what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such model directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{directory}: not a model directory (no {CONFIG_FILE}); "
                        "give a run/model directory from `tinystories train` or a transformers GPT-Neo directory")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if cfg.get("format") == FORMAT:
        return "ours", cfg
    if cfg.get("model_type") == "gpt_neo":
        return "hf", cfg
    raise UserError(f"{path}: neither a tinystories model nor a transformers GPT-Neo config")


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[GPTNeo, Tokenizer]:
    """Load (model in eval mode, tokenizer) from one of our directories or a transformers GPT-Neo one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    kind, raw = read_config(directory)
    if kind == "hf":
        from .hf import load_hf_dir

        model, tok = load_hf_dir(directory)
        return model.to(device=device, dtype=dtype).eval(), tok

    cfg = ModelConfig.from_dict(raw["model"])
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{directory}: missing {WEIGHTS_FILE}")
    tok = Tokenizer.load(directory)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"{directory}: tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights}: unreadable weights ({e})") from None
    model = GPTNeo(cfg)
    if cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("wte.weight"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("rope_")]
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not match config.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device=device, dtype=dtype).eval(), tok


def model_config(model) -> ModelConfig:
    return _unwrap(model).config


def _unwrap(model):
    """The GPTNeo inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
