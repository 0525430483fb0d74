"""Interop with `transformers`: export our models, import theirs.

The paper's released checkpoints (roneneldan/TinyStories-*) are GPT-Neo directories:
config.json (GPT-Neo fields), weights (model.safetensors or pytorch_model.bin) and
tokenizer files. `WEIGHT_NAMES` below is the whole mapping between the two namings.
The modern block (rope + RMSNorm) maps to Llama's names (`to_llama_state`): as LlamaForCausalLM with
SwiGLU, as ArceeForCausalLM (Llama's block with a plain up/down MLP and any activation) with ReLU^2 or GELU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ModelConfig
from ..errors import UserError
from ..data.tokenizer import EOT, Tokenizer

if TYPE_CHECKING:  # torch loads only when weights move, so that config checks stay instant
    import torch

    from .gpt_neo import GPTNeo

# ours -> transformers, `{i}` = layer. A tuple means "these HF tensors stacked on dim 0".
WEIGHT_NAMES: dict[str, str | tuple[str, ...]] = {
    "wte.weight": "transformer.wte.weight",
    "wpe.weight": "transformer.wpe.weight",
    "blocks.{i}.ln_1.weight": "transformer.h.{i}.ln_1.weight",
    "blocks.{i}.ln_1.bias": "transformer.h.{i}.ln_1.bias",
    "blocks.{i}.attn.qkv.weight": ("transformer.h.{i}.attn.attention.q_proj.weight",
                                   "transformer.h.{i}.attn.attention.k_proj.weight",
                                   "transformer.h.{i}.attn.attention.v_proj.weight"),
    "blocks.{i}.attn.out_proj.weight": "transformer.h.{i}.attn.attention.out_proj.weight",
    "blocks.{i}.attn.out_proj.bias": "transformer.h.{i}.attn.attention.out_proj.bias",
    "blocks.{i}.ln_2.weight": "transformer.h.{i}.ln_2.weight",
    "blocks.{i}.ln_2.bias": "transformer.h.{i}.ln_2.bias",
    "blocks.{i}.mlp.c_fc.weight": "transformer.h.{i}.mlp.c_fc.weight",
    "blocks.{i}.mlp.c_fc.bias": "transformer.h.{i}.mlp.c_fc.bias",
    "blocks.{i}.mlp.c_proj.weight": "transformer.h.{i}.mlp.c_proj.weight",
    "blocks.{i}.mlp.c_proj.bias": "transformer.h.{i}.mlp.c_proj.bias",
    "ln_f.weight": "transformer.ln_f.weight",
    "ln_f.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",  # only written/read when not tied to wte
}

# Buffers that old GPT-Neo checkpoints carry (causal masks); nothing to load.
_IGNORED_SUFFIXES = ("attn.attention.bias", "attn.attention.masked_bias")


def _expand(cfg: ModelConfig) -> list[tuple[str, str | tuple[str, ...]]]:
    """WEIGHT_NAMES with the layer index filled in, for this config's tensors."""
    pairs = []
    for ours, theirs in WEIGHT_NAMES.items():
        if ours == "lm_head.weight" and cfg.tie_embeddings:
            continue
        layers = range(cfg.layers) if "{i}" in ours else [None]
        for i in layers:
            fill = (lambda s: s.format(i=i)) if i is not None else (lambda s: s)
            pairs.append((fill(ours), tuple(map(fill, theirs)) if isinstance(theirs, tuple) else fill(theirs)))
    return pairs


# ------------------------------------------------------------------ config

# The transformers class for each rope + RMSNorm MLP: SwiGLU is Llama's; Arcee (transformers >= 4.53) is
# Llama with a plain up/down MLP whose activation is any of transformers' ACT2FN, biases optional.
ROPE_CLASSES = {"swiglu": "LlamaForCausalLM", "relu2": "ArceeForCausalLM", "gelu": "ArceeForCausalLM"}
# each MLP's `hidden_act` (an ACT2FN name): silu gates SwiGLU; relu(x)^2; gelu(x, tanh). Read back through
# `_MLP_OF_ACT`, which also takes gelu_new (the same tanh GELU under GPT-2's name).
HIDDEN_ACT = {"swiglu": "silu", "relu2": "relu2", "gelu": "gelu_pytorch_tanh"}
_MLP_OF_ACT = {act: mlp for mlp, act in HIDDEN_ACT.items()} | {"gelu_new": "gelu"}


def export_class(cfg: ModelConfig) -> str:
    """The `transformers` class that expresses `cfg` exactly, or a one-line UserError saying why none does.

    GPT-Neo's block exports as GPTNeoForCausalLM. rope + RMSNorm is Llama's block: with SwiGLU it exports as
    LlamaForCausalLM, with ReLU^2 or GELU as ArceeForCausalLM, when every layer sees the whole context
    (neither has local attention)."""
    # zero_init only sets the starting weights: the trained model computes what the plain block does;
    # mlp=relu2 is a block option of GPT-Neo's block, and Arcee's MLP under rope + RMSNorm
    options = [o for o in cfg.block_options if o not in ("zero_init", "mlp=relu2")]
    if options:
        raise UserError("this model cannot be exported to transformers: its block options "
                        f"({', '.join(options)}) have no transformers GPT-Neo, Llama or Arcee equivalent")
    if (cfg.position, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu"):
        return "GPTNeoForCausalLM"
    if (cfg.position, cfg.norm) == ("rope", "rmsnorm"):
        name = ROPE_CLASSES[cfg.mlp]
        local = [i for i, t in enumerate(cfg.layer_types) if t == "local"]
        if local and cfg.window < cfg.context:
            raise UserError(f"this model cannot be exported to transformers' {name.removesuffix('ForCausalLM')}: "
                            f"layers {local} attend to a local window of {cfg.window} < context {cfg.context} "
                            "and it attends globally")
        return name
    raise UserError("this model cannot be exported to transformers: GPT-Neo needs position=learned, norm=layernorm, "
                    "mlp=gelu, and Llama and Arcee need position=rope, norm=rmsnorm; it has "
                    f"position={cfg.position}, norm={cfg.norm}, mlp={cfg.mlp}")


def check_exportable(cfg: ModelConfig) -> None:
    """A UserError unless a transformers class can express `cfg` exactly."""
    export_class(cfg)


def attention_types(layer_types: list[str]) -> list:
    """['global', 'local', 'global', 'local'] -> [[['global', 'local'], 2]] (GPT-Neo's run-length form)."""
    n = len(layer_types)
    for period in range(1, n + 1):
        if n % period == 0 and layer_types == layer_types[:period] * (n // period):
            return [[layer_types[:period], n // period]]
    raise AssertionError("unreachable: period n always matches")


def to_hf_config(cfg: ModelConfig, tokenizer: Tokenizer | None = None) -> dict:
    """The transformers config.json for `cfg`: GPT-Neo, or Llama / Arcee for the rope + RMSNorm block."""
    eot = tokenizer.eot_id if tokenizer is not None else None
    if export_class(cfg) != "GPTNeoForCausalLM":
        return to_llama_config(cfg, eot)
    return {
        "architectures": ["GPTNeoForCausalLM"],
        "model_type": "gpt_neo",
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context,
        "hidden_size": cfg.hidden,
        "num_layers": cfg.layers,
        "num_heads": cfg.heads,
        "attention_types": attention_types(cfg.layer_types),
        "window_size": cfg.window,
        "intermediate_size": cfg.mlp_width,
        "activation_function": "gelu_new",
        "embed_dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "resid_dropout": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def to_llama_config(cfg: ModelConfig, eot: int | None) -> dict:
    """config.json of the LlamaForCausalLM (SwiGLU) or ArceeForCausalLM (ReLU^2, GELU) that computes what our
    rope + RMSNorm model does.

    attention_bias is on because our out_proj has a bias (the flag covers q/k/v too: they get zeros); the
    plain MLP's c_fc and c_proj have biases, so Arcee's mlp_bias is on."""
    arcee = ROPE_CLASSES[cfg.mlp] == "ArceeForCausalLM"
    return {
        "architectures": [ROPE_CLASSES[cfg.mlp]],
        "model_type": "arcee" if arcee else "llama",
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.mlp_width,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.heads,
        "head_dim": cfg.head_dim,
        "hidden_act": HIDDEN_ACT[cfg.mlp],
        "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": True,
        "mlp_bias": arcee,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def _attn_dropout(hf: dict) -> float | None:
    """GPT-Neo's attention_dropout, or None where it equals resid_dropout (our one-rate default)."""
    resid, attn = float(hf.get("resid_dropout", 0.0)), float(hf.get("attention_dropout", 0.0))
    return None if attn == resid else attn


def from_hf_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a transformers GPT-Neo (or Llama) config.json (a UserError if it is not one we can run)."""
    if hf.get("model_type") in ("llama", "arcee"):
        return from_llama_config(hf, source)
    if hf.get("model_type") != "gpt_neo":
        raise UserError(f"{source}: model_type is {hf.get('model_type')!r}, only gpt_neo, llama and arcee are supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"{source}: activation_function {act!r} is not supported (GPT-Neo uses gelu_new)")
    try:
        layers = int(hf["num_layers"])
        types = [t for pattern, n in hf.get("attention_types", [[["global", "local"], layers // 2]])
                 for _ in range(n) for t in pattern]
        hidden = int(hf["hidden_size"])
        inter = hf.get("intermediate_size")
        return ModelConfig(
            vocab_size=int(hf.get("vocab_size", 50257)),
            context=int(hf.get("max_position_embeddings", 2048)),
            hidden=hidden,
            layers=layers,
            heads=int(hf.get("num_heads", 16)),
            attention=_collapse(types),
            window=int(hf.get("window_size", 256)),
            intermediate=None if inter in (None, 4 * hidden) else int(inter),
            dropout=float(hf.get("resid_dropout", 0.0)),
            attn_dropout=_attn_dropout(hf),
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            scale_attn=False,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: not a usable GPT-Neo config ({type(e).__name__}: {e})") from None


def from_llama_config(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our rope + RMSNorm ModelConfig for a Llama (SwiGLU) or Arcee (ReLU^2, GELU) config.json that block can
    run exactly."""
    arcee = hf.get("model_type") == "arcee"
    name = "Arcee" if arcee else "Llama"

    def bad(what):
        raise UserError(f"{source}: {what}; only {name}'s plain block is supported (what `tinystories export` writes)")

    try:
        hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        act = hf.get("hidden_act", "relu2" if arcee else "silu")
        mlp = _MLP_OF_ACT.get(act)
        if mlp is None or (ROPE_CLASSES[mlp] == "ArceeForCausalLM") != arcee:  # Llama's MLP is SwiGLU, Arcee's plain
            bad(f"hidden_act {act!r}")
        if int(hf.get("num_key_value_heads") or heads) != heads:
            bad("grouped-query attention (num_key_value_heads != num_attention_heads)")
        if int(hf.get("head_dim") or hidden // heads) * heads != hidden:
            bad("head_dim x num_attention_heads != hidden_size")
        if rope.get("rope_type", "default") != "default" or (hf.get("mlp_bias") and not arcee):
            bad("rope scaling or MLP biases")
        context = int(hf.get("max_position_embeddings", 2048))
        return ModelConfig(
            vocab_size=int(hf.get("vocab_size", 32000)), context=context, hidden=hidden,
            layers=int(hf["num_hidden_layers"]), heads=heads, attention="global", window=context,
            intermediate=int(hf["intermediate_size"]), layer_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            scale_attn=True, position="rope", norm="rmsnorm", mlp=mlp,
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: not a usable {name} config ({type(e).__name__}: {e})") from None


def _collapse(types: list[str]) -> str | list[str]:
    if all(t == "global" for t in types):
        return "global"
    if all(t == "local" for t in types):
        return "local"
    if types == ["global" if i % 2 == 0 else "local" for i in range(len(types))]:
        return "alternating"
    return types


# ------------------------------------------------------------------ weights

def to_hf_state(model: GPTNeo) -> dict[str, torch.Tensor]:
    """Our state dict renamed to transformers' names (fp32, CPU, contiguous): GPT-Neo's, or Llama's / Arcee's."""
    import torch

    cfg = model.config
    ours = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if export_class(cfg) != "GPTNeoForCausalLM":
        return to_llama_state(cfg, ours)
    out = {}
    for name, theirs in _expand(cfg):
        t = ours[name]
        if isinstance(theirs, tuple):
            q, k, v = t.chunk(3, dim=0)
            if cfg.scale_attn:  # GPT-Neo never scales scores: fold 1/sqrt(head_dim) into q (no bias)
                q = q / math.sqrt(cfg.head_dim)
            for hf_name, part in zip(theirs, (q, k, v)):
                out[hf_name] = part.contiguous()
        else:
            out[theirs] = t.contiguous()
    return out


def to_llama_state(cfg: ModelConfig, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our rope + RMSNorm weights under LlamaForCausalLM's (and ArceeForCausalLM's) names: the whole mapping,
    in one place. SwiGLU's gate_up splits into gate_proj and up_proj; the plain MLP's c_fc is up_proj."""
    import torch

    out = {"model.embed_tokens.weight": ours["wte.weight"], "model.norm.weight": ours["ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    for i in range(cfg.layers):
        ours_i, hf = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = ours[ours_i + "attn.qkv.weight"].chunk(3, dim=0)
        if not cfg.scale_attn:  # Llama always divides scores by sqrt(head_dim): undo it inside q
            q = q * math.sqrt(cfg.head_dim)
        if cfg.mlp == "swiglu":
            gate, up = ours[ours_i + "mlp.gate_up.weight"].chunk(2, dim=0)
            out.update({hf + "mlp.gate_proj.weight": gate, hf + "mlp.up_proj.weight": up,
                        hf + "mlp.down_proj.weight": ours[ours_i + "mlp.down.weight"]})
        else:
            out.update({hf + f"mlp.{theirs}_proj.{kind}": ours[ours_i + f"mlp.c_{mine}.{kind}"]
                        for theirs, mine in (("up", "fc"), ("down", "proj")) for kind in ("weight", "bias")})
        out.update({
            hf + "input_layernorm.weight": ours[ours_i + "ln_1.weight"],
            hf + "self_attn.q_proj.weight": q, hf + "self_attn.k_proj.weight": k, hf + "self_attn.v_proj.weight": v,
            hf + "self_attn.o_proj.weight": ours[ours_i + "attn.out_proj.weight"],
            hf + "self_attn.o_proj.bias": ours[ours_i + "attn.out_proj.bias"],
            hf + "post_attention_layernorm.weight": ours[ours_i + "ln_2.weight"],
        })
        for name in ("q_proj", "k_proj", "v_proj"):  # attention_bias covers them; ours have none
            out[hf + f"self_attn.{name}.bias"] = torch.zeros(cfg.hidden)
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> GPTNeo:
    """A GPTNeo for `cfg` holding transformers-named `state` (a UserError on missing or misshapen tensors)."""
    import torch

    from .gpt_neo import GPTNeo

    if cfg.position == "rope":  # from_hf_config gives rope only for a Llama or Arcee config
        return from_llama_state(cfg, state, source)
    state = {k.removeprefix("model."): v for k, v in state.items()}  # some exporters add a prefix
    model = GPTNeo(cfg)
    ours = model.state_dict()
    loaded, missing = {}, []
    for name, theirs in _expand(cfg):
        names = theirs if isinstance(theirs, tuple) else (theirs,)
        if any(n not in state for n in names):
            missing += [n for n in names if n not in state]
            continue
        t = torch.cat([state[n] for n in names], dim=0) if len(names) > 1 else state[names[0]]
        if t.shape != ours[name].shape:
            raise UserError(f"{source}: {'+'.join(names)} has shape {tuple(t.shape)}, "
                            f"config.json implies {tuple(ours[name].shape)}")
        loaded[name] = t.float()
    if missing:
        raise UserError(f"{source}: missing {len(missing)} tensor(s) config.json implies, e.g. {missing[0]}")
    used = {n for _, theirs in _expand(cfg) for n in (theirs if isinstance(theirs, tuple) else (theirs,))}
    extra = [k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES)
             and not (k == "lm_head.weight" and cfg.tie_embeddings)]
    if extra:
        raise UserError(f"{source}: {len(extra)} tensor(s) config.json does not account for, e.g. {extra[0]}")
    with torch.no_grad():
        for name, t in loaded.items():
            ours[name].copy_(t)
    return model


def from_llama_state(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> GPTNeo:
    """A GPTNeo holding LlamaForCausalLM- or ArceeForCausalLM-named `state`: `to_llama_state` read backwards
    (q/k/v biases must be 0; a missing MLP or out_proj bias is zero)."""
    import torch

    from .gpt_neo import GPTNeo

    def get(name):
        if name not in state:
            raise UserError(f"{source}: missing {name}, which config.json implies")
        return state[name].float()

    ours = {"wte.weight": get("model.embed_tokens.weight"), "ln_f.weight": get("model.norm.weight")}
    if not cfg.tie_embeddings:
        ours["lm_head.weight"] = get("lm_head.weight")
    for i in range(cfg.layers):
        o, hf = f"blocks.{i}.", f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj"):
            bias = state.get(hf + f"self_attn.{name}.bias")
            if bias is not None and bool(bias.any()):
                raise UserError(f"{source}: {hf}self_attn.{name}.bias is not zero; our block has no q/k/v biases")
        out_bias = state.get(hf + "self_attn.o_proj.bias")
        ours.update({
            o + "ln_1.weight": get(hf + "input_layernorm.weight"),
            o + "attn.qkv.weight": torch.cat([get(hf + f"self_attn.{n}_proj.weight") for n in "qkv"]),
            o + "attn.out_proj.weight": get(hf + "self_attn.o_proj.weight"),
            o + "attn.out_proj.bias": out_bias.float() if out_bias is not None else torch.zeros(cfg.hidden),
            o + "ln_2.weight": get(hf + "post_attention_layernorm.weight"),
        })
        if cfg.mlp == "swiglu":
            ours[o + "mlp.gate_up.weight"] = torch.cat([get(hf + "mlp.gate_proj.weight"), get(hf + "mlp.up_proj.weight")])
            ours[o + "mlp.down.weight"] = get(hf + "mlp.down_proj.weight")
        else:
            for theirs, mine, width in (("up", "fc", cfg.mlp_width), ("down", "proj", cfg.hidden)):
                bias = state.get(hf + f"mlp.{theirs}_proj.bias")
                ours[o + f"mlp.c_{mine}.weight"] = get(hf + f"mlp.{theirs}_proj.weight")
                ours[o + f"mlp.c_{mine}.bias"] = bias.float() if bias is not None else torch.zeros(width)
    model = GPTNeo(cfg)
    target = model.state_dict()
    with torch.no_grad():
        for name, t in ours.items():
            if t.shape != target[name].shape:
                raise UserError(f"{source}: the tensor for {name} has shape {tuple(t.shape)}, "
                                f"config.json implies {tuple(target[name].shape)}")
            target[name].copy_(t)
    return model


# ------------------------------------------------------------------ directories

def _weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"{directory}: no model.safetensors or pytorch_model.bin (a transformers GPT-Neo directory needs one)")


def _read_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    import torch

    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st)), str(st)
        if pt.is_file():
            return torch.load(str(pt), map_location="cpu", weights_only=True), str(pt)
    except Exception as e:  # a truncated or foreign file: say which, in one line
        bad = st if st.is_file() else pt
        raise UserError(f"{bad}: unreadable weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    raise UserError(f"{directory}: no model.safetensors or pytorch_model.bin (a transformers GPT-Neo directory needs one)")


def _read_hf_tokenizer(directory: Path) -> Tokenizer:
    if (directory / "tokenizer.json").is_file():
        return Tokenizer.load(directory)
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.is_file() and merges.is_file():  # GPT-2 style slow-tokenizer files
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        tk = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        eot = tk.token_to_id(EOT)
        if eot is None:
            raise UserError(f"{vocab}: has no {EOT} token")
        tk.add_special_tokens([EOT])
        return Tokenizer(tk, {"kind": "external", "vocab_size": tk.get_vocab_size(), "eot_id": eot})
    raise UserError(f"{directory}: no tokenizer.json (or vocab.json + merges.txt) beside the weights")


def check_hf_dir(directory: str | Path, hf: dict | None = None) -> tuple[ModelConfig, Tokenizer]:
    """Our config and the tokenizer of a transformers GPT-Neo directory, or a UserError; no torch."""
    directory = Path(directory)
    path = directory / "config.json"
    if hf is None:
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{directory}: no config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
    cfg = from_hf_config(hf, str(path))
    _weights_file(directory)
    tok = _read_hf_tokenizer(directory)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"{directory}: tokenizer has {tok.vocab_size} tokens but config.json "
                        f"vocab_size is only {cfg.vocab_size}")
    return cfg, tok


def load_hf_dir(directory: str | Path) -> tuple[GPTNeo, Tokenizer]:
    """Import a transformers GPT-Neo directory (e.g. a downloaded roneneldan/TinyStories-33M)."""
    cfg, tok = check_hf_dir(directory)
    state, source = _read_hf_weights(Path(directory))
    return from_hf_state(cfg, state, source).eval(), tok


def check_tokenizer_fits(tok: Tokenizer, cfg: ModelConfig, source) -> None:
    # transformers does not clip ids the way our Tokenizer does for a truncated vocabulary,
    # so every id its tokenizer can produce must have an embedding row.
    full = tok.tk.get_vocab_size(with_added_tokens=True)
    if full > cfg.vocab_size:
        raise UserError(f"{source}: its tokenizer.json has {full} tokens but the model embeds only "
                        f"{cfg.vocab_size} (the rest read as <|unk|> here); a transformers tokenizer cannot "
                        "do that, so this model cannot be exported: use a tokenizer the model fully embeds")
