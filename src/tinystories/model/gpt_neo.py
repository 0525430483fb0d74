"""GPT-Neo as the TinyStories paper trained it, in plain PyTorch, with the optional modern block.

The defaults are the paper's: learned absolute positions, pre-LayerNorm blocks, attention layers
alternating global and local (a local token sees itself and the `window - 1` tokens before it,
`in_window`), attention scores NOT divided by sqrt(head_dim), a 4x GELU (tanh) MLP, lm_head tied to
the token embedding. `hf.py` maps these weights to and from `transformers`' GPTNeoForCausalLM.

ModelConfig's options change the block, each in one place below: rope, RMSNorm, SwiGLU or ReLU²
MLPs, QK-norm, zero-initialised output projections, an untied head, logit soft-capping, value
embeddings, x0 mixing and document masking. This file is the one forward pass; the fast decode
paths for generation live in `generate/fast.py` and are tested equal to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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


def in_window(qi: torch.Tensor, kj: torch.Tensor, window: int | None) -> torch.Tensor:
    """The attention window, the one place it is applied: query slot qi may see key slot kj when kj
    is not in its future and, for a local layer, among the `window` slots ending at qi (itself
    included). The C kernels apply the same rule (kernels/csrc/kernels.c), checked by tests."""
    allowed = kj <= qi
    if window is not None:
        allowed = allowed & (kj > qi - window)
    return allowed


def first_key(start: int, window: int | None) -> int:
    """The first cache slot a local layer can see from slot `start` on: it reads only that slice."""
    return 0 if window is None else max(0, start - window + 1)


def attention_mask(q_start: int, q_len: int, k_start: int, k_len: int, window: int | None, device,
                   pad: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask, True = may attend: [q_len, k_len], or [B, 1, q_len, k_len] with `pad`.

    Indices are cache slots (= positions without padding). `pad[b]` left-padding slots of
    row b are hidden from its real tokens; a padding query sees only itself, so that no
    row of the softmax is empty (which would give NaN).
    """
    qi = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    kj = torch.arange(k_start, k_start + k_len, device=device)[None, :]
    allowed = in_window(qi, kj, window)
    if pad is None:
        return allowed
    real_key = kj[None] >= pad[:, None, None]         # [B, 1, S]
    return (allowed[None] & (real_key | (kj == qi)[None]))[:, None]


def rope_tables(cfg: ModelConfig, device=None):
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim))
    ang = torch.outer(torch.arange(cfg.context, device=device).float(), inv)  # [context, head_dim/2]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [..., D] with cos, sin broadcasting to [..., D/2] (x [B, H, T, D] and tables [T, D/2], or the
    # fused projection's [B, T, 2, H, D] and [T, 1, 1, D/2]); rotate pairs (first half, second half) as
    # in GPT-NeoX / Llama.
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

class Masks:
    """The attention masks of one forward pass, built once and shared by the layers that need them.

    None means no mask is needed: a fresh causal sequence (SDPA's is_causal) or a single new
    token that may see every key its layer reads. `docs` [B, T] (document masking, a fresh
    sequence only): the document index of each token; a query sees only keys of its own document.
    """

    def __init__(self, start: int, T: int, device, pad: torch.Tensor | None, docs: torch.Tensor | None = None):
        self.start, self.T, self.device, self.pad, self.docs = start, T, device, pad, docs
        self._built: dict = {}

    def get(self, window: int | None, k_start: int, S: int) -> torch.Tensor | None:
        if self.pad is None and self.docs is None:
            if self.T == 1 and (window is None or S <= window):
                return None
            if self.start == 0 and k_start == 0 and S == self.T and (window is None or self.T <= window):
                return None
        key = (window, k_start, S)
        if key not in self._built:
            mask = attention_mask(self.start, self.T, k_start, S, window, self.device, self.pad)
            if self.docs is not None:  # [B, 1, T, T]: a story never reads the one before it
                mask = mask & (self.docs[:, None, :, None] == self.docs[:, None, None, :])
            self._built[key] = mask
        return self._built[key]


@dataclass
class Pass:
    """What every layer of one forward pass shares."""
    start: int                          # cache slot of the first token
    masks: Masks
    rope: tuple | None = None           # (cos, sin) tables for rope models
    cache: KVCache | None = None
    x0: torch.Tensor | None = None      # x0_mix: the token (+ position) embeddings
    ve: torch.Tensor | None = None      # value_embeddings: the value-embedding rows of the tokens


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.window = cfg.window if cfg.layer_types[layer] == "local" else None
        self.scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn else 1.0
        self.dropout = cfg.attention_dropout  # on the attention probabilities
        self.qk_norm = cfg.qk_norm
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=False)  # HF: q_proj, k_proj, v_proj stacked
        self.out_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=True)
        self.resid_drop = nn.Dropout(cfg.dropout)
        # value embeddings: v += ve_gain * (the token's value-embedding row), one gain per layer
        self.ve_gain = nn.Parameter(torch.tensor(0.5)) if cfg.value_embeddings else None

    def forward(self, x: torch.Tensor, p: Pass) -> torch.Tensor:
        B, T, C = x.shape
        dropout = self.dropout if self.training else 0.0
        resid = self.training and self.resid_drop.p > 0
        qkv = self.qkv(x)
        if (p.masks.docs is None and p.cache is None and p.start == 0 and p.masks.pad is None
                and kernels.use_attention_kernel(qkv, self.head_dim, dropout)):
            # a fresh sequence on a CPU: the fused kernel (same math, no head transposes). qk_norm, value
            # embeddings and rope are applied in the projection's layout first, in the order the SDPA path
            # below applies them; on SDPA instead they trained at 0.76-0.78x the plain block's tokens/s
            if p.rope is not None or self.qk_norm or p.ve is not None:
                qk, v = qkv.view(B, T, 3, self.heads, self.head_dim).split((2, 1), dim=2)
                if self.qk_norm:
                    qk = F.rms_norm(qk, (self.head_dim,))
                if p.ve is not None:
                    v = v + self.ve_gain * p.ve.view(B, T, 1, self.heads, self.head_dim)
                if p.rope is not None:
                    cos, sin = p.rope[0][:T, None, None], p.rope[1][:T, None, None]  # [T, 1, 1, D/2]
                    qk = apply_rope(qk, cos, sin)
                # back to the projection's dtype (bf16 under autocast), as SDPA's autocast casts its inputs
                qkv = torch.cat([qk.to(qkv.dtype), v.to(qkv.dtype)], dim=2).view(B, T, 3 * C)
            y = self.out_proj(kernels.fused_attention(qkv, self.heads, self.window, self.scale))
            return self.resid_drop(y) if resid else y
        q, k, v = qkv.view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:  # unit RMS per head: the scores' scale no longer drifts with the weights
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if p.ve is not None:
            v = v + self.ve_gain * p.ve.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        if p.rope is not None:
            cos, sin = p.rope[0][p.start:p.start + T], p.rope[1][p.start:p.start + T]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_start = first_key(p.start, self.window) if p.cache is not None else 0
        if p.cache is not None:
            k, v = p.cache.update(self.layer, p.start, k, v, lo=k_start)
        mask = p.masks.get(self.window, k_start, k.size(2))
        y = self.out_proj(attend(q, k, v, mask, self.scale, dropout).transpose(1, 2).reshape(B, T, C))
        return self.resid_drop(y) if resid else y


def attend(q, k, v, mask: torch.Tensor | None, scale: float, dropout: float = 0.0) -> torch.Tensor:
    """Attention through SDPA. No mask means plain causal attention over a fresh sequence,
    or one new token that may see every key it was given."""
    if mask is None and q.size(2) > 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


class MLP(nn.Module):
    """GPT-Neo's MLP, c_proj(act(c_fc(x))): act = GELU (tanh, HF's gelu_new) or ReLU squared (relu2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.hidden, cfg.mlp_width)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.relu2 = cfg.mlp == "relu2"

    def forward(self, x):
        h = self.c_fc(x)
        if self.relu2:
            h = F.relu(h).square()
        elif self.training and torch.is_grad_enabled() and kernels.use_gelu_kernel(h):
            h = kernels.gelu(h)  # the library's gelu runs at ~1 G elements/s on a CPU (kernels.c)
        else:
            h = F.gelu(h, approximate="tanh")
        y = self.c_proj(h)
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
        # x0 mixing: the block's input is x_gain * x + x0_gain * x0 (starts as x: gains 1 and 0)
        self.x_gains = nn.Parameter(torch.tensor([1.0, 0.0])) if cfg.x0_mix else None

    def forward(self, x: torch.Tensor, p: Pass) -> torch.Tensor:
        if self.x_gains is not None:
            x = self.x_gains[0] * x + self.x_gains[1] * p.x0
        x = x + self.attn(self.ln_1(x), p)
        return x + self.mlp(self.ln_2(x))


def output_projections(block: Block) -> list[nn.Linear]:
    """The layers that write into the residual stream (what zero_init zeroes)."""
    return [block.attn.out_proj, block.mlp.down if isinstance(block.mlp, SwiGLU) else block.mlp.c_proj]


class GPTNeo(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.wpe = nn.Embedding(cfg.context, cfg.hidden) if cfg.position == "learned" else None
        self.vte = nn.Embedding(cfg.vocab_size, cfg.hidden) if cfg.value_embeddings else None
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
        if cfg.zero_init:  # each block starts as the identity; its outputs grow from zero
            for block in self.blocks:
                for lin in output_projections(block):
                    nn.init.zeros_(lin.weight)

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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, start: int = 0, last_only: bool = False,
                pad: torch.Tensor | None = None):
        """idx [B, T] token ids at cache slots start..start+T-1 (= their positions).

        Returns the mean cross-entropy when `targets` is given (-1 = ignore), else logits
        [B, T, V] (or [B, 1, V] with `last_only`, which is all that sampling needs).
        `pad` [B] (generation only): row b is left-padded with pad[b] slots, so its token
        at slot s sits at position s - pad[b] and never attends to the padding.
        """
        cfg = self.config
        B, T = idx.shape
        assert start + T <= cfg.context, f"sequence of {start + T} exceeds context {cfg.context}"
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
        p = Pass(start, Masks(start, T, idx.device, pad, self.documents(idx, cache)), cache=cache,
                 rope=(self.rope_cos, self.rope_sin) if self.wpe is None else None,
                 x0=x if cfg.x0_mix else None, ve=self.vte(idx) if self.vte is not None else None)
        for block in self.blocks:
            x = block(x, p)
        x = self.ln_f(x)
        if targets is not None:
            if cfg.logit_softcap is None and kernels.use_chunked_loss(x):
                return kernels.lm_head_loss(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1))
            logits = self.logits(x)
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        if last_only:
            x = x[:, -1:, :]
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer; with logit_softcap c, logits are c * tanh(logits / c), all within (-c, c)."""
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def documents(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor | None:
        """Document masking: each token's document index, a new one at each doc_mask_token (the
        <|endoftext|> that starts a story belongs to it). Only a fresh sequence needs it: generation
        feeds one story, whose <|endoftext|> is its first token."""
        eot = self.config.doc_mask_token
        if eot is None or cache is not None:
            return None
        return (idx == eot).cumsum(1)
