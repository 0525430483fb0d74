"""GPT-Neo as the TinyStories paper trained it, in plain PyTorch.

Learned absolute positions, pre-LayerNorm blocks, attention layers alternating global
and local (a local token sees itself and the `window - 1` tokens before it), attention
scores NOT divided by sqrt(head_dim), a 4x GELU (tanh) MLP, lm_head tied to the token
embedding. `hf.py` maps these weights to and from `transformers`' GPTNeoForCausalLM.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import cpu as kernels
from .config import ModelConfig


class KVCache:
    """Preallocated keys and values for incremental decoding, one buffer pair per layer.

    Slot s of row b holds the token fed at slot s (its position is s - pad[b] when the
    batch is left-padded). `reorder` follows beams. Local layers read back only the last
    `window` keys, so the cache never needs trimming to respect the window.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        assert max_len <= cfg.context, "cache longer than the position table"
        shape = (batch, cfg.heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.layers)]
        self.max_len = max_len

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor, lo: int = 0):
        T = k.size(2)
        assert start + T <= self.max_len, "KV cache overflow: the caller must slide the window"
        kc, vc = self.k[layer], self.v[layer]
        kc.narrow(2, start, T).copy_(k)  # narrow + copy_: cheaper per token than slice assignment
        vc.narrow(2, start, T).copy_(v)
        return kc.narrow(2, lo, start + T - lo), vc.narrow(2, lo, start + T - lo)

    def reorder(self, index: torch.Tensor, upto: int | None = None) -> None:
        """Rows become rows `index` of before (beam search, dropping finished rows).

        With `upto`, only slots [0, upto) are filled and only they are copied.
        """
        if upto is None or index.numel() != self.k[0].size(0):
            self.k = [t.index_select(0, index) for t in self.k]
            self.v = [t.index_select(0, index) for t in self.v]
            return
        for t in (*self.k, *self.v):
            t[:, :, :upto] = t[:, :, :upto].index_select(0, index)


def attention_mask(q_start: int, q_len: int, k_start: int, k_len: int, window: int | None, device,
                   pad: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask, True = may attend: [q_len, k_len], or [B, 1, q_len, k_len] with `pad`.

    Indices are cache slots (= positions without padding). `pad[b]` left-padding slots of
    row b are hidden from its real tokens; a padding query sees only itself, so that no
    row of the softmax is empty (which would give NaN).
    """
    qi = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    kj = torch.arange(k_start, k_start + k_len, device=device)[None, :]
    allowed = kj <= qi
    if window is not None:
        allowed &= kj > qi - window
    if pad is None:
        return allowed
    real_key = kj[None] >= pad[:, None, None]         # [B, 1, S]
    return (allowed[None] & (real_key | (kj == qi)[None]))[:, None]


def rope_tables(cfg: ModelConfig, device=None):
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim))
    ang = torch.outer(torch.arange(cfg.context, device=device).float(), inv)  # [context, head_dim/2]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, T, D]; rotate pairs (first half, second half) as in GPT-NeoX / Llama.
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.window = cfg.window if cfg.layer_types[layer] == "local" else None
        self.scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn else 1.0
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=False)  # HF: q_proj, k_proj, v_proj stacked
        self.out_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=True)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def key_start(self, start: int, cache: KVCache | None) -> int:
        # A local layer never looks further back than its window, so it reads only that slice.
        if cache is None or self.window is None:
            return 0
        return max(0, start - self.window + 1)

    def forward(self, x, rope=None, cache: KVCache | None = None, start: int = 0, masks: "Masks | None" = None):
        B, T, C = x.shape
        dropout = self.dropout if self.training else 0.0
        qkv = self.qkv(x)
        if (rope is None and cache is None and start == 0 and (masks is None or masks.pad is None)
                and kernels.use_attention_kernel(qkv, self.head_dim, dropout)):
            # a fresh sequence on a CPU, small heads: the fused kernel (same math, no head transposes)
            return self.out_proj(kernels.fused_attention(qkv, self.heads, self.window, self.scale))
        q, k, v = qkv.view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            cos, sin = rope[0][start:start + T], rope[1][start:start + T]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_start = self.key_start(start, cache)
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v, lo=k_start)

        mask = masks.get(self, k_start, k.size(2)) if masks is not None else None
        y = self.out_proj(attend(q, k, v, mask, self.scale, dropout).transpose(1, 2).reshape(B, T, C))
        return self.resid_drop(y) if dropout else y


def attend(q, k, v, mask: torch.Tensor | None, scale: float, dropout: float = 0.0) -> torch.Tensor:
    """Attention through SDPA. No mask means plain causal attention over a fresh sequence,
    or one new token that may see every key it was given."""
    if mask is None and q.size(2) > 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


class Masks:
    """The attention masks of one forward pass, built once and shared by the layers that need them.

    None means no mask is needed: a fresh causal sequence (SDPA's is_causal) or a single new
    token that may see every key its layer reads.
    """

    def __init__(self, start: int, T: int, device, pad: torch.Tensor | None):
        self.start, self.T, self.device, self.pad = start, T, device, pad
        self._built: dict = {}

    def get(self, attn: SelfAttention, k_start: int, S: int) -> torch.Tensor | None:
        window = attn.window
        if self.pad is None:
            if self.T == 1 and (window is None or S <= window):
                return None
            if self.start == 0 and k_start == 0 and S == self.T and (window is None or self.T <= window):
                return None
        key = (window, k_start, S)
        if key not in self._built:
            self._built[key] = attention_mask(self.start, self.T, k_start, S, window, self.device, self.pad)
        return self._built[key]


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.hidden, cfg.mlp_width)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        y = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # HF's gelu_new
        return self.drop(y) if self.training and self.drop.p else y


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.hidden, 2 * cfg.mlp_width, bias=False)
        self.down = nn.Linear(cfg.mlp_width, cfg.hidden, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        y = self.down(F.silu(gate) * up)
        return self.drop(y) if self.training and self.drop.p else y


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.hidden, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = SelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg)
        self.mlp = SwiGLU(cfg) if cfg.mlp == "swiglu" else MLP(cfg)

    def forward(self, x, rope=None, cache=None, start=0, masks=None):
        x = x + self.attn(self.ln_1(x), rope, cache, start, masks)
        return x + self.mlp(self.ln_2(x))


class GPTNeo(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.wpe = nn.Embedding(cfg.context, cfg.hidden) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.position == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # GPT-Neo's init: N(0, 0.02) for matrices and embeddings, zero biases.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields tied weights once

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch, max_len or self.config.context, p.device, dtype or p.dtype)

    @property
    def flat_decode(self) -> bool:
        """Whether `decode` runs its flat GPT-Neo arithmetic (else it calls `forward`)."""
        c = self.config
        return (c.position, c.norm, c.mlp) == ("learned", "layernorm", "gelu")

    def decode_weights(self, int8: bool = False) -> list | None:
        """The tensors `decode` reads, gathered once per generation (attribute lookups add up);
        None for configs that only `forward` runs (rope, rmsnorm, swiglu). With `int8`, the matrices
        are `kernels.Int8Weight` copies: an approximate model that drafts tokens for `generate`."""
        if not self.flat_decode:
            return None
        mat = kernels.Int8Weight.quantize if int8 else (lambda w: w.detach())
        layers = []
        for b in self.blocks:
            w = (b.ln_1.weight.detach(), b.ln_1.bias.detach(), mat(b.attn.qkv.weight), mat(b.attn.out_proj.weight),
                 b.attn.out_proj.bias.detach(), b.ln_2.weight.detach(), b.ln_2.bias.detach(), mat(b.mlp.c_fc.weight),
                 b.mlp.c_fc.bias.detach(), mat(b.mlp.c_proj.weight), b.mlp.c_proj.bias.detach())
            layers.append((*w, b.attn, kernels.block_struct(*w)))
        return [self.wte.weight, self.wpe.weight, self.ln_f.weight, self.ln_f.bias, mat(self.lm_head.weight), layers]

    @torch.inference_mode()
    def decode(self, idx: torch.Tensor, cache: KVCache, start: int = 0, pad: torch.Tensor | None = None,
               last_only: bool = True, weights: list | None = None) -> torch.Tensor:
        """Generation's forward pass: logits [B, V] after the last of idx's tokens ([B, T, V] if not
        `last_only`), with `cache` and `pad` as in `forward`, in eval mode.

        For GPT-Neo blocks this is the arithmetic of `forward` written flat: for the smallest models
        the per-module calls of `forward` cost more than the arithmetic itself. `weights` is
        `decode_weights()`, which a generation loop gathers once.
        """
        weights = weights or self.decode_weights()
        if weights is None or self.training:
            logits = self.forward(idx, cache=cache, start=start, pad=pad, last_only=last_only)
            return logits[:, -1] if last_only else logits
        wte, wpe, lnf_w, lnf_b, head, layers = weights
        B, T = idx.shape
        C, eps = self.config.hidden, self.config.layer_norm_eps
        if pad is None:
            x = wte[idx] + wpe[start:start + T]
        else:
            x = wte[idx] + wpe[(torch.arange(start, start + T, device=idx.device)[None, :] - pad[:, None]).clamp(min=0)]
        masks = Masks(start, T, idx.device, pad)
        fused = B * T <= kernels.SKINNY_MAX_ROWS and x.dtype == torch.float32
        for i, (w1, b1, wqkv, wo, bo, w2, b2, wfc, bfc, wpr, bpr, attn, blk) in enumerate(layers):
            if fused and blk is not None:  # the whole block in one C call (a few rows: decoding)
                assert start + T <= cache.max_len, "KV cache overflow: the caller must slide the window"
                if not x.is_contiguous():
                    x = x.contiguous()
                kernels.decode_block(x, blk, attn.heads, self.config.mlp_width, cache.k[i], cache.v[i], start,
                                     attn.window, attn.scale, pad, eps)
                continue
            q, k, v = kernels.linear(F.layer_norm(x, (C,), w1, b1, eps), wqkv).view(
                B, T, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            k_start = attn.key_start(start, cache)
            k, v = cache.update(i, start, k, v, lo=k_start)
            y = attend(q, k, v, masks.get(attn, k_start, k.size(2)), attn.scale)
            x = x + kernels.linear(y.transpose(1, 2).reshape(B, T, C), wo, bo)
            h = F.gelu(kernels.linear(F.layer_norm(x, (C,), w2, b2, eps), wfc, bfc), approximate="tanh")
            x = x + kernels.linear(h, wpr, bpr)
        if last_only:
            x = x[:, -1]
        return kernels.linear(F.layer_norm(x, (C,), lnf_w, lnf_b, eps), head)

    @torch.inference_mode()
    def decode_static(self, idx: torch.Tensor, cache: KVCache, pos: torch.Tensor, pad: torch.Tensor | None,
                      weights: list) -> torch.Tensor:
        """`decode` of one token per row (idx [B, 1]) at cache slot `pos`, a 0-d long tensor, with
        attention over every slot of the cache under a mask built from `pos`: no shape, address or
        Python value depends on the step, so that a CUDA graph can capture it once and replay it.
        Logits [B, V]. GPT-Neo blocks only (`weights` = decode_weights())."""
        wte, wpe, lnf_w, lnf_b, head, layers = weights
        C, eps = self.config.hidden, self.config.layer_norm_eps
        B = idx.size(0)
        slots = torch.arange(cache.max_len, device=idx.device)
        if pad is None:
            x = wte[idx] + wpe[pos].view(1, 1, C)
            seen = (slots <= pos)[None, None, None, :]                           # [1, 1, 1, S]
        else:
            x = wte[idx] + wpe[(pos - pad).clamp(min=0)][:, None]
            seen = ((slots <= pos)[None, :] & (slots[None, :] >= pad[:, None]))[:, None, None, :]  # [B, 1, 1, S]
        index = pos.view(1)
        for i, (w1, b1, wqkv, wo, bo, w2, b2, wfc, bfc, wpr, bpr, attn, _) in enumerate(layers):
            q, k, v = F.linear(F.layer_norm(x, (C,), w1, b1, eps), wqkv).view(
                B, 1, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            cache.k[i].index_copy_(2, index, k)
            cache.v[i].index_copy_(2, index, v)
            mask = seen if attn.window is None else seen & (slots > pos - attn.window)[None, None, None, :]
            y = F.scaled_dot_product_attention(q, cache.k[i], cache.v[i], attn_mask=mask, scale=attn.scale)
            x = x + F.linear(y.transpose(1, 2).reshape(B, 1, C), wo, bo)
            h = F.gelu(F.linear(F.layer_norm(x, (C,), w2, b2, eps), wfc, bfc), approximate="tanh")
            x = x + F.linear(h, wpr, bpr)
        return F.linear(F.layer_norm(x[:, -1], (C,), lnf_w, lnf_b, eps), head)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, start: int = 0, last_only: bool = False,
                pad: torch.Tensor | None = None):
        """idx [B, T] token ids at cache slots start..start+T-1 (= their positions).

        Returns the mean cross-entropy when `targets` is given (-1 = ignore), else logits
        [B, T, V] (or [B, 1, V] with `last_only`, which is all that sampling needs).
        `pad` [B] (generation only): row b is left-padded with pad[b] slots, so its token
        at slot s sits at position s - pad[b] and never attends to the padding.
        """
        B, T = idx.shape
        assert start + T <= self.config.context, f"sequence of {start + T} exceeds context {self.config.context}"
        assert pad is None or self.wpe is not None, "left padding needs learned positions"
        x = self.wte(idx)
        if self.wpe is not None:
            if pad is None:
                x = x + self.wpe.weight[start:start + T]
            else:
                pos = torch.arange(start, start + T, device=idx.device)[None, :] - pad[:, None]
                x = x + self.wpe(pos.clamp(min=0))
        if self.training and self.drop.p:
            x = self.drop(x)
        rope = (self.rope_cos, self.rope_sin) if self.wpe is None else None
        masks = Masks(start, T, idx.device, pad)
        for block in self.blocks:
            x = block(x, rope, cache, start, masks)
        x = self.ln_f(x)
        if targets is not None:
            if kernels.use_chunked_loss(x):
                return kernels.lm_head_loss(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1))
            logits = self.lm_head(x)
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x)
