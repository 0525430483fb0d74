"""The fast decode paths: GPT-Neo's block written flat for generation, beside `GPTNeo.forward`.

For the smallest models the per-module calls of `forward` cost more than the arithmetic itself,
so generation gathers the weights once (`decode_weights`) and runs the same math as plain
function calls (`decode`), or one whole block per C call (`kernels.decode_block`) when a few rows
are decoded. `decode_static` is the one-token step that a CUDA graph captures. An int8 copy of
the weights (`decode_weights(model, int8=True)`) drafts tokens that `decode` then verifies.

A bf16 model on a CPU (`generate --dtype bf16`) decodes with bf16 matrices and fp32 everything
else: the activations, the KV cache (`DecodeWeights.cache_dtype`), the norms' weights and the
biases. A step of a few rows (decoding) runs the C block and skinny products on the bf16 weights:
they read half the bytes of fp32 weights, which is what such a step is bound by, and compute in
fp32 what an fp32 model holding the bf16-rounded weights computes, up to the summation order. Many
rows at once (a long prompt's prefill, a wide batch) go through the library's bf16 matrix product,
with the activations rounded to bf16 on the way in.

Only the paper's block has a flat path (learned positions, LayerNorm, GELU MLP, no block option);
every other config decodes through `forward`. tests/test_generate.py and tests/test_kernels.py
keep each path equal to `forward`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..kernels import cpu as kernels
from ..model.gpt_neo import GPTNeo, KVCache, Masks, attend, first_key, in_window


class LayerWeights(NamedTuple):
    """One GPT-Neo block's tensors for decoding (matrices fp32, bf16, or `kernels.Int8Weight` copies)."""
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc_w: torch.Tensor
    fc_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    heads: int
    head_dim: int
    window: int | None          # None = a global layer
    scale: float
    block: object | None        # kernels.block_struct of the tensors above (None: per-op only)

    def tensors(self) -> tuple:
        return self[:11]


class DecodeWeights(NamedTuple):
    wte: torch.Tensor
    wpe: torch.Tensor
    lnf_w: torch.Tensor
    lnf_b: torch.Tensor
    head: torch.Tensor
    layers: list[LayerWeights]
    cache_dtype: torch.dtype    # the activations' and the KV cache's dtype (fp32 for a bf16 model on a CPU)


def flat_supported(model: GPTNeo) -> bool:
    """Whether `decode` runs the flat GPT-Neo arithmetic for this model (else it calls `forward`)."""
    return model.config.is_paper_block


def decode_weights(model: GPTNeo, int8: bool = False) -> DecodeWeights | None:
    """The tensors `decode` reads, gathered once per generation (attribute lookups add up); None for
    configs that only `forward` runs. With `int8`, the matrices are `kernels.Int8Weight` copies: an
    approximate model that drafts tokens for `generate`."""
    if not flat_supported(model):
        return None
    p = model.wte.weight
    # a bf16 model on a CPU: bf16 matrices, fp32 vectors and activations (see the module's docstring)
    mixed = p.device.type == "cpu" and p.dtype == torch.bfloat16 and kernels.attention_available()
    act = torch.float32 if mixed else p.dtype
    mat = kernels.Int8Weight.quantize if int8 else (lambda w: w.detach())
    vec = (lambda t: t.detach().to(act))
    layers = []
    for b in model.blocks:
        a = b.attn
        w = (vec(b.ln_1.weight), vec(b.ln_1.bias), mat(a.qkv.weight), mat(a.out_proj.weight),
             vec(a.out_proj.bias), vec(b.ln_2.weight), vec(b.ln_2.bias), mat(b.mlp.c_fc.weight),
             vec(b.mlp.c_fc.bias), mat(b.mlp.c_proj.weight), vec(b.mlp.c_proj.bias))
        layers.append(LayerWeights(*w, a.heads, a.head_dim, a.window, a.scale, kernels.block_struct(*w)))
    return DecodeWeights(model.wte.weight, vec(model.wpe.weight), vec(model.ln_f.weight), vec(model.ln_f.bias),
                         mat(model.lm_head.weight), layers, act)


@torch.inference_mode()
def decode(model: GPTNeo, idx: torch.Tensor, cache: KVCache, start: int = 0, pad: torch.Tensor | None = None,
           last_only: bool = True, weights: DecodeWeights | None = None) -> torch.Tensor:
    """Generation's forward pass: logits [B, V] after the last of idx's tokens ([B, T, V] if not
    `last_only`), with `cache` and `pad` as in `GPTNeo.forward`, in eval mode. `weights` is
    `decode_weights(model)`, which a generation loop gathers once."""
    weights = weights or decode_weights(model)
    if weights is None or model.training:
        logits = model(idx, cache=cache, start=start, pad=pad, last_only=last_only)
        return logits[:, -1] if last_only else logits
    if cache.k[0].dtype != weights.cache_dtype:  # the C block writes the cache as the activations' dtype
        raise ValueError(f"decode: the cache is {cache.k[0].dtype} but these weights decode in "
                         f"{weights.cache_dtype}; make it with model.new_cache(..., dtype=weights.cache_dtype)")
    B, T = idx.shape
    C, eps, mlp = model.config.hidden, model.config.layer_norm_eps, model.config.mlp_width
    tokens = weights.wte[idx].to(weights.cache_dtype)
    if pad is None:
        x = tokens + weights.wpe[start:start + T]
    else:
        pos = (torch.arange(start, start + T, device=idx.device)[None, :] - pad[:, None]).clamp(min=0)
        x = tokens + weights.wpe[pos]
    masks = Masks(start, T, idx.device, pad)
    fused = B * T <= kernels.SKINNY_MAX_ROWS and x.dtype == torch.float32
    for i, w in enumerate(weights.layers):
        if fused and w.block is not None:  # the whole block in one C call (a few rows: decoding)
            assert start + T <= cache.max_len, "KV cache overflow: the caller must slide the window"
            if not x.is_contiguous():
                x = x.contiguous()
            kernels.decode_block(x, w.block, w.heads, mlp, cache.k[i], cache.v[i], start, w.window, w.scale, pad, eps)
            continue
        q, k, v = kernels.linear(F.layer_norm(x, (C,), w.ln1_w, w.ln1_b, eps), w.qkv).view(
            B, T, 3, w.heads, w.head_dim).permute(2, 0, 3, 1, 4)
        k_start = first_key(start, w.window)
        k, v = cache.update(i, start, k, v, lo=k_start)
        y = attend(q, k, v, masks.get(w.window, k_start, k.size(2)), w.scale)
        x = x + kernels.linear(y.transpose(1, 2).reshape(B, T, C), w.out_w, w.out_b)
        h = F.gelu(kernels.linear(F.layer_norm(x, (C,), w.ln2_w, w.ln2_b, eps), w.fc_w, w.fc_b), approximate="tanh")
        x = x + kernels.linear(h, w.proj_w, w.proj_b)
    if last_only:
        x = x[:, -1]
    return kernels.linear(F.layer_norm(x, (C,), weights.lnf_w, weights.lnf_b, eps), weights.head)


@torch.inference_mode()
def decode_static(model: GPTNeo, idx: torch.Tensor, cache: KVCache, pos: torch.Tensor, pad: torch.Tensor | None,
                  weights: DecodeWeights) -> torch.Tensor:
    """`decode` of one token per row (idx [B, 1]) at cache slot `pos`, a 0-d long tensor, with
    attention over every slot of the cache under a mask built from `pos`: no shape, address or
    Python value depends on the step, so that a CUDA graph can capture it once and replay it.
    Logits [B, V]. GPT-Neo blocks only (`weights` = decode_weights(model)), on CUDA only: the
    activations are the weights' dtype (never the CPU's mixed bf16 weights)."""
    C, eps = model.config.hidden, model.config.layer_norm_eps
    B = idx.size(0)
    slots = torch.arange(cache.max_len, device=idx.device)
    if pad is None:
        x = weights.wte[idx] + weights.wpe[pos].view(1, 1, C)
        real = torch.ones_like(slots, dtype=torch.bool)[None, None, None, :]       # [1, 1, 1, S]
    else:
        x = weights.wte[idx] + weights.wpe[(pos - pad).clamp(min=0)][:, None]
        real = (slots[None, :] >= pad[:, None])[:, None, None, :]                  # [B, 1, 1, S]
    index = pos.view(1)
    for i, w in enumerate(weights.layers):
        q, k, v = F.linear(F.layer_norm(x, (C,), w.ln1_w, w.ln1_b, eps), w.qkv).view(
            B, 1, 3, w.heads, w.head_dim).permute(2, 0, 3, 1, 4)
        cache.k[i].index_copy_(2, index, k)
        cache.v[i].index_copy_(2, index, v)
        mask = real & in_window(pos.view(1, 1), slots[None, :], w.window)[None, None]
        y = F.scaled_dot_product_attention(q, cache.k[i], cache.v[i], attn_mask=mask, scale=w.scale)
        x = x + F.linear(y.transpose(1, 2).reshape(B, 1, C), w.out_w, w.out_b)
        h = F.gelu(F.linear(F.layer_norm(x, (C,), w.ln2_w, w.ln2_b, eps), w.fc_w, w.fc_b), approximate="tanh")
        x = x + F.linear(h, w.proj_w, w.proj_b)
    return F.linear(F.layer_norm(x[:, -1], (C,), weights.lnf_w, weights.lnf_b, eps), weights.head)
