"""What a forward pass computes inside each block, recovered with hooks installed only while inspecting.

The model (`model/gpt_neo.py`) has fused fast paths (a C attention kernel, SDPA) that never form
the attention probabilities, and it must not slow down to keep them. So we record the two
projections every path computes, the attention's `qkv` output and the MLP's first projection,
with forward hooks that exist only inside `capture(...)`, and recompute from them:

- attention probabilities with the layer's own scale, rotary table, causal mask and local window;
- MLP activations with the block's own nonlinearity (GELU tanh, or SwiGLU's silu(gate) * up).

`attention_output` sends the recomputed probabilities through `v` and `out_proj`; a test checks it
equals the module's real output, which is what makes these numbers the model's and not a copy's.

Why not TransformerLens: it ships its own model classes and converts known `transformers`
checkpoints into them. It would load the paper's released GPT-Neo models, but not our modern block
(rope + RMSNorm + SwiGLU in our weight layout), and it would be a second implementation of our
model to keep in step. Two hooks on our own modules see every model `load_model` returns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Captured:
    """Per layer, the last forward pass's qkv projection [B, T, 3C] and MLP pre-activation."""
    qkv: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp_pre: dict[int, torch.Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def capture(model, layers: list[int] | None = None, attention: bool = True, mlp: bool = True):
    """Hooks on `model.blocks[i]` for i in `layers` (default all) while the `with` body runs;
    yields a `Captured` the forward passes fill. The hooks are gone afterwards, even on error."""
    # The attention is recomputed from the qkv projection's output (attention_probs): options that change
    # q, k, v or the mask after that projection would make the recomputation wrong, so they are refused.
    unsupported = [o for o in model.config.block_options if o in ("qk_norm", "value_embeddings", "doc_mask_token")]
    if attention and unsupported:
        from ..errors import UserError

        raise UserError(f"inspect attention does not handle models with {', '.join(unsupported)} yet")
    got = Captured()
    handles = []
    for i in (range(len(model.blocks)) if layers is None else layers):
        block = model.blocks[i]
        if attention:
            handles.append(block.attn.qkv.register_forward_hook(_keep(got.qkv, i)))
        if mlp:
            handles.append(_mlp_first(block.mlp).register_forward_hook(_keep(got.mlp_pre, i)))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def _keep(store: dict, i: int):
    def hook(_module, _inputs, output):
        store[i] = output.detach()
    return hook


def _mlp_first(mlp):
    # GPT-Neo's MLP: c_fc -> gelu -> c_proj; SwiGLU: gate_up -> silu(gate) * up -> down.
    return mlp.gate_up if hasattr(mlp, "gate_up") else mlp.c_fc


def mlp_width(model) -> int:
    return model.config.mlp_width


def mlp_activation(mlp, pre: torch.Tensor) -> torch.Tensor:
    """The MLP's hidden activations [.., width] from its first projection's output: what `c_proj`
    (or `down`) multiplies. A neuron is one coordinate of this."""
    if hasattr(mlp, "gate_up"):
        gate, up = pre.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(pre, approximate="tanh")  # HF's gelu_new, as the block computes it


def split_heads(attn, qkv: torch.Tensor, rope=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, H, T, D] of a fresh sequence (positions 0..T-1), rotated if the model uses rope."""
    B, T, _ = qkv.shape
    q, k, v = qkv.view(B, T, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    if rope is not None:
        from ..model.gpt_neo import apply_rope

        cos, sin = rope[0][:T], rope[1][:T]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q, k, v


def rope_of(model):
    return (model.rope_cos, model.rope_sin) if getattr(model, "wpe", None) is None else None


def attention_probs(model, layer: int, qkv: torch.Tensor) -> torch.Tensor:
    """Attention probabilities [B, H, T, T] (query, key) of layer `layer` for a fresh sequence, from
    its captured qkv: the layer's scale (GPT-Neo: none), causal mask and local window."""
    attn = model.blocks[layer].attn
    q, k, _ = split_heads(attn, qkv.float(), rope_of(model))
    from ..model.gpt_neo import attention_mask

    T = q.size(2)
    scores = (q @ k.transpose(-1, -2)) * attn.scale
    allowed = attention_mask(0, T, 0, T, attn.window, q.device)  # the model's own causal + window rule
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def attention_output(model, layer: int, qkv: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """probs @ v through the layer's out_proj: [B, T, C], what the attention module returns."""
    attn = model.blocks[layer].attn
    _, _, v = split_heads(attn, qkv.float(), rope_of(model))
    B, H, T, D = v.shape
    y = (probs @ v).transpose(1, 2).reshape(B, T, H * D)
    return attn.out_proj(y.to(attn.out_proj.weight.dtype))
