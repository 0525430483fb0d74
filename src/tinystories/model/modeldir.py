"""The model directory: config.json + model.safetensors + tokenizer files, self-contained.

A training run directory is a model directory with more in it (optimizer state, metrics),
so every command that takes a model takes a run too. A `transformers` GPT-Neo directory
(config.json with model_type gpt_neo) loads as well, through `hf.py`.

`check_model_dir` finds what is wrong with a directory without importing torch, so that
commands fail in a moment, before they load anything heavy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..runtime.files import atomic_write_bytes, atomic_write_json
from .config import ModelConfig

if TYPE_CHECKING:
    import torch

    from ..data.tokenizer import Tokenizer
    from .gpt_neo import GPTNeo

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "tinystories-model"
FORMAT_VERSION = 1


def save_model(directory: str | Path, model: GPTNeo, tokenizer: Tokenizer | None = None,
               extra: dict | None = None) -> None:
    """Write config, weights (atomically, file by file) and tokenizer into `directory`."""
    import torch
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
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(cfg).__name__}; "
                        f"the file is damaged or not a model's config")
    if cfg.get("format") == FORMAT:
        return "ours", cfg
    if cfg.get("model_type") in ("gpt_neo", "llama", "arcee"):  # llama, arcee: our exports of the modern block
        return "hf", cfg
    raise UserError(f"{path}: neither a tinystories model nor a transformers GPT-Neo, Llama or Arcee config")


def check_model_dir(directory: str | Path) -> tuple[ModelConfig, Tokenizer]:
    """(config, tokenizer) once the directory has what loading needs; else a UserError.

    Checks the config, the weights file and the tokenizer (and that the model embeds every
    token id the tokenizer makes) without importing torch.
    """
    from ..data.tokenizer import Tokenizer

    directory = Path(directory)
    kind, raw = read_config(directory)
    if kind == "hf":
        from .hf import check_hf_dir

        return check_hf_dir(directory, raw)
    if not isinstance(raw.get("model"), dict):
        raise UserError(f"{directory / CONFIG_FILE}: no \"model\" section (the model's shape)")
    cfg = ModelConfig.from_dict(raw["model"])
    if not (directory / WEIGHTS_FILE).is_file():
        raise UserError(f"{directory}: missing {WEIGHTS_FILE}")
    tok = Tokenizer.load(directory)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"{directory}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
                        f"only {cfg.vocab_size}; the tokenizer does not belong to this model")
    return cfg, tok


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> tuple[GPTNeo, Tokenizer]:
    """Load (model in eval mode, tokenizer) from one of our directories or a transformers GPT-Neo one."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .gpt_neo import GPTNeo

    dtype = dtype or torch.float32
    directory = Path(directory)
    if read_config(directory)[0] == "hf":
        from .hf import load_hf_dir

        model, tok = load_hf_dir(directory)
        check_finite(model.state_dict(), directory)
        return model.to(device=device, dtype=dtype).eval(), tok

    cfg, tok = check_model_dir(directory)
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights}: unreadable weights ({e})") from None
    model = GPTNeo(cfg)
    if cfg.tie_embeddings and "wte.weight" in state:
        state.setdefault("lm_head.weight", state["wte.weight"])
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not match config.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, t in state.items():
        if t.shape != expected[k].shape:
            raise UserError(f"{weights}: {k} has shape {tuple(t.shape)} but config.json implies "
                            f"{tuple(expected[k].shape)}; the weights do not belong to this config")
    check_finite(state, weights)
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval(), tok


def check_finite(state: dict, where: str | Path) -> None:
    """UserError if a weight is NaN or infinite: such a model writes garbage, so every verb refuses it
    (a diverged run's last weights, or a damaged file). A pass over the weights, ~0.1 s for 33M."""
    import torch

    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{where}: {k} has {bad} non-finite value(s) (NaN or inf); the model diverged or "
                            f"the file is damaged: use an earlier checkpoint or train again")


def model_config(model) -> ModelConfig:
    return _unwrap(model).config


def _unwrap(model):
    """The GPTNeo inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
