"""`tinystories export`: a model directory (ours, or a GPT-Neo one) as a `transformers` directory:
GPTNeoForCausalLM for GPT-Neo's block, LlamaForCausalLM for rope + RMSNorm + SwiGLU, ArceeForCausalLM for
rope + RMSNorm with ReLU^2 or GELU (`hf.export_class`).

It reads through `modeldir` and converts through `hf`, so neither of those needs the other's export side.
"""

from __future__ import annotations

from pathlib import Path

from ..runtime.files import atomic_dir, atomic_write_json, check_apart
from .hf import check_tokenizer_fits, to_hf_config, to_hf_state
from .modeldir import check_model_dir, load_model


def export_hf(model_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write `model_dir` (ours, or a GPT-Neo dir) as a transformers GPT-Neo, Llama or Arcee directory at `out_dir`.

    The result loads offline with AutoModelForCausalLM / AutoTokenizer.from_pretrained.
    """
    from safetensors.torch import save_file

    check_apart(out_dir, [model_dir])  # an --out inside the model (or holding it) would be replaced with --force
    cfg, tok = check_model_dir(model_dir)  # what can be wrong is found before torch loads
    hf_cfg = to_hf_config(cfg, tok)
    check_tokenizer_fits(tok, cfg, model_dir)
    model, tok = load_model(model_dir)
    state = to_hf_state(model)
    with atomic_dir(out_dir, force=force, option="--out") as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_cfg)
        atomic_write_json(tmp / "generation_config.json",
                          {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id})
        tok.save(tmp)  # tokenizer.json + tokenizer_meta.json (ours; transformers ignores the latter)
        eot = tok.tk.id_to_token(tok.eot_id)
        special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
        atomic_write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": cfg.context,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            **special,
        })
        atomic_write_json(tmp / "special_tokens_map.json", special)
    return Path(out_dir)
