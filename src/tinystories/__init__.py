"""tinystories: the TinyStories paper's whole system (Eldan & Li 2023) on one machine.

The pipeline, one module per step:
  sources / prepare -> tokenizer -> config / model -> train -> generate -> evaluate

    import tinystories
    model, tokenizer = tinystories.load("runs/8M")
    [[story]] = tinystories.generate(model, tokenizer, ["Once upon a time"], temperature=0)

Heavy modules (torch) load on first use, so `import tinystories` stays light.
"""

__version__ = "0.1.0"


def load(directory, device: str = "cpu", dtype=None):
    """(model in eval mode, tokenizer) from a model/run directory or a transformers GPT-Neo directory."""
    import torch

    from .model.modeldir import load_model
    from .runtime.device import resolve_device

    return load_model(directory, resolve_device(device), dtype or torch.float32)


def __getattr__(name):
    # `tinystories.generate` is the generate module, which is callable: tinystories.generate(model, tok, prompts).
    if name == "generate":
        import importlib

        return importlib.import_module(".generate", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
