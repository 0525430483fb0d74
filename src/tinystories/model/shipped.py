"""The model that ships inside the package: what `generate`, `serve` and `inspect` use without MODEL_DIR.

A ~1.9M-parameter budget-recipe model trained by `tinystories train --max-time 40m` on the shared
TinyStories files (README, "The model in the box"). It is a plain model directory under
`tinystories/resources/model/`, so every command that takes a MODEL_DIR takes it too.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def shipped_model_dir() -> Path:
    """The directory of the shipped model (config.json, model.safetensors, tokenizer files)."""
    from importlib.resources import files

    path = Path(str(files("tinystories").joinpath("resources", "model")))
    if not (path / "config.json").is_file():
        raise UserError(f"the shipped model is missing from this install ({path}); give a MODEL_DIR")
    return path
