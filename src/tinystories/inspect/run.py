"""The two verbs as functions: load a model directory, compute, write the page and the JSON."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..runtime.console import progress
from ..runtime.files import atomic_write_json, atomic_write_text


def out_dir(model_dir: str | Path, out: str | Path | None) -> Path:
    """The output directory, checked (it could be made and written) but not made: `_write` makes it once
    there is something to write, so that a model that fails to load or run leaves no empty --out behind."""
    from ..evaluate.common import check_report_dir

    d = Path(out) if out is not None else Path(model_dir) / "inspect"
    if d.exists() and not d.is_dir():
        raise UserError(f"--out {d}: exists and is not a directory")
    check_report_dir(d)
    return d


def _write(d: Path, name: str, data: dict, page: str) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / f"{name}.json", data)
    atomic_write_text(d / f"{name}.html", page)
    return [str(d / f"{name}.html"), str(d / f"{name}.json")]


def _check(model_dir):
    """The model's config, from a check that fails in a moment, before torch loads."""
    from ..model.modeldir import check_model_dir

    return check_model_dir(model_dir)[0]


def _load(model_dir, device: str):
    from ..model.modeldir import load_model
    from ..runtime.device import resolve_device

    return load_model(model_dir, device=resolve_device(device))


def _shape(cfg) -> str:
    return (f"{cfg.layers} layer(s), hidden {cfg.hidden}, {cfg.heads} heads of {cfg.head_dim}, MLP {cfg.mlp_width} "
            f"({cfg.mlp}), positions {cfg.position}, attention {cfg.layer_types}")


def inspect_attention(model_dir: str | Path, *, text: str | None = None, prompt: str | None = None,
                      max_new_tokens: int = 80, stories: int = 20, data: str | None = None,
                      out: str | Path | None = None, device: str = "cpu") -> dict:
    """Attention of every head on one text (or a prompt and its greedy continuation), and the head
    table over `stories` held-out stories. Writes attention.html and attention.json into `out`."""
    from .html import attention_page, heatmaps
    from .stories import TokenText, held_out_stories

    if (text is None) == (prompt is None):
        raise UserError("give exactly one of --text TEXT or --prompt PROMPT")
    if not (text or prompt or "").strip():
        raise UserError("--text/--prompt is empty; give some words")
    if prompt is not None and max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1 with --prompt, got {max_new_tokens}")
    _check(model_dir)
    source, held = held_out_stories(model_dir, data, stories)
    d = out_dir(model_dir, out)
    from .attention import head_summary, head_table, text_attention  # torch: after the checks

    model, tok = _load(model_dir, device)
    cfg = model.config
    if prompt is not None:
        from ..generate import generate

        done = generate(model, tok, prompt, max_new_tokens=max_new_tokens, temperature=0.0)[0][0]
        ids_prompt = tok.encode(prompt)
        ids = (ids_prompt + done.tokens)[:cfg.context]
        n_prompt = len(ids_prompt)
    else:
        ids = tok.encode(text)[:cfg.context]
        n_prompt = 0
    token_text = TokenText(tok)
    with progress(total=len(held), desc="inspect attention", unit="story") as bar:
        table = head_table(model, tok, held, progress=bar.update)
    data_out = {"model": str(model_dir), "model_shape": _shape(cfg), "source": source,
                "text": {"tokens": [token_text(i) for i in ids], "ids": ids, "prompt_tokens": n_prompt,
                         "probs": text_attention(model, tok, ids)},
                "table": table, "summary": head_summary(table["heads"])}
    data_out["files"] = _write(d, "attention", data_out,
                               attention_page(data_out, heatmaps(data_out["text"]["probs"], data_out["text"]["tokens"])))
    return data_out


def inspect_neurons(model_dir: str | Path, *, layer: int | None = None, neurons: list[int] | None = None,
                    stories: int = 20, k: int = 20, data: str | None = None, out: str | Path | None = None,
                    device: str = "cpu", seed: int = 0) -> dict:
    """Top-k tokens of every MLP neuron of `layer` (default: the last) over `stories` held-out stories;
    the page shows `neurons` (default: the first two and the one with the largest activation)."""
    from .html import neurons_page
    from .stories import held_out_stories

    if k < 1:
        raise UserError(f"--top-k must be at least 1, got {k}")
    cfg = _check(model_dir)
    layer = cfg.layers - 1 if layer is None else layer
    if not 0 <= layer < cfg.layers:
        raise UserError(f"--layer {layer}: the model has layers 0..{cfg.layers - 1}")
    bad = [j for j in neurons or [] if not 0 <= j < cfg.mlp_width]
    if bad:
        raise UserError(f"--neurons {bad[0]}: layer {layer} has neurons 0..{cfg.mlp_width - 1}")
    source, held = held_out_stories(model_dir, data, stories)
    from .neurons import scan_neurons  # torch: after the checks

    model, tok = _load(model_dir, device)
    d = out_dir(model_dir, out)
    with progress(total=len(held), desc="inspect neurons", unit="story") as bar:
        result = scan_neurons(model, tok, held, layer, k=k, seed=seed, progress=bar.update)
    show = neurons or sorted({0, min(1, cfg.mlp_width - 1), result["largest"]["neuron"]})
    data_out = {"model": str(model_dir), "model_shape": _shape(cfg), "source": source, "shown": show, **result}
    data_out["files"] = _write(d, "neurons", data_out, neurons_page(data_out, show))
    return data_out
