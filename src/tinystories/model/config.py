"""Model configuration as typed data, and the presets as rows of a table.

Field names are ours (hidden, layers, heads, context); `hf.py` maps them to the
`transformers` GPT-Neo names (hidden_size, num_layers, attention_types, window_size).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import UserError

PAPER_VOCAB = 10_000  # the paper keeps GPT-Neo's 10K most frequent tokens


@dataclass
class ModelConfig:
    vocab_size: int = PAPER_VOCAB
    context: int = 512              # learned positions = max sequence length (HF: max_position_embeddings)
    hidden: int = 64
    layers: int = 8
    heads: int = 16
    # "alternating" = global, local, global, ... (GPT-Neo); or "global", "local", or one entry per layer.
    attention: str | list[str] = "alternating"
    window: int = 256               # a local-attention token sees itself and the window-1 tokens before it
    intermediate: int | None = None  # MLP width; None = 4 * hidden (GPT-Neo), 8/3 * hidden for swiglu
    dropout: float = 0.0            # embedding and residual dropout, and attention dropout unless attn_dropout says
    # Dropout on the attention probabilities; None = `dropout` (GPT-Neo's one rate). 0 with dropout > 0 keeps
    # attention on SDPA's fused path: on the 128x4 rope model (Zen 4, bf16, 60 steps) dropout 0.1 everywhere
    # trained at 6,797 tokens/s against 10,289 with none; with attn_dropout 0 a 30-minute run kept 8,084
    # against 8,908-9,053 without dropout.
    attn_dropout: float | None = None
    layer_norm_eps: float = 1e-5
    scale_attn: bool = False        # GPT-Neo does NOT divide scores by sqrt(head_dim)
    # The optional "modern" block (issue 9); the defaults are GPT-Neo as the paper trained it.
    position: str = "learned"       # learned | rope
    norm: str = "layernorm"         # layernorm | rmsnorm
    mlp: str = "gelu"               # gelu (gelu_new, tanh approximation) | swiglu | relu2 (ReLU squared)
    rope_theta: float = 10_000.0
    tie_embeddings: bool = True     # GPT-Neo ties lm_head to the token embedding; false = an untied head
    # Block options from the speedrun record (issue 17), each off by default (gpt_neo.py applies them).
    qk_norm: bool = False           # RMS-normalise q and k per head (no gain) before attention
    zero_init: bool = False         # attention and MLP output projections start at zero
    logit_softcap: float | None = None  # logits = c * tanh(logits / c)
    value_embeddings: bool = False  # a second token table added into every layer's values (learned gain each)
    x0_mix: bool = False            # each block's input = a * x + b * x0 (the embeddings), a, b learned per layer
    doc_mask_token: int | None = None  # attention does not cross this token (<|endoftext|>'s id); None = it may

    # The fields beyond shape, position, norm, mlp and dropout that a budget-table row may set (Row.block).
    ROW_OPTIONS = ("qk_norm", "zero_init", "tie_embeddings", "logit_softcap", "value_embeddings", "x0_mix",
                   "doc_mask_token", "attn_dropout")

    def __post_init__(self):
        self.validate()

    # -- derived ------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mlp_width(self) -> int:
        if self.intermediate is not None:
            return self.intermediate
        if self.mlp == "swiglu":
            return _round_up(int(8 * self.hidden / 3), 8)
        return 4 * self.hidden

    @property
    def attention_dropout(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def is_paper_block(self) -> bool:
        """GPT-Neo's block as the paper trained it (what `transformers`' GPTNeo and the flat decode path run)."""
        return ((self.position, self.norm, self.mlp) == ("learned", "layernorm", "gelu") and self.block_options == [])

    @property
    def block_options(self) -> list[str]:
        """The issue-17 block options this config turns on (an untied head is GPT-Neo's too)."""
        on = [name for name in ("qk_norm", "zero_init", "value_embeddings", "x0_mix") if getattr(self, name)]
        on += [name for name in ("logit_softcap", "doc_mask_token") if getattr(self, name) is not None]
        return on + (["mlp=relu2"] if self.mlp == "relu2" else [])

    @property
    def layer_types(self) -> list[str]:
        a = self.attention
        if isinstance(a, (list, tuple)):
            return list(a)
        if a == "alternating":
            return ["global" if i % 2 == 0 else "local" for i in range(self.layers)]
        return [a] * self.layers

    # -- checks -------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg):
            raise UserError(f"model config: {msg}")

        for name in ("vocab_size", "context", "hidden", "layers", "heads", "window"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name} must be a positive integer, got {v!r}")
        if self.hidden % self.heads:
            bad(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        if self.position == "rope" and self.head_dim % 2:
            bad(f"rope needs an even head size, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attn_dropout is not None and not 0.0 <= self.attn_dropout < 1.0:
            bad(f"attn_dropout must be in [0, 1) or none, got {self.attn_dropout}")
        if isinstance(self.attention, str) and self.attention not in ("alternating", "global", "local"):
            bad(f"attention must be alternating, global, local or a list, got {self.attention!r}")
        types = self.layer_types
        if len(types) != self.layers or any(t not in ("global", "local") for t in types):
            bad(f"attention list must have {self.layers} entries of 'global'/'local', got {types}")
        for name, allowed in (("position", ("learned", "rope")), ("norm", ("layernorm", "rmsnorm")),
                              ("mlp", ("gelu", "swiglu", "relu2"))):
            if getattr(self, name) not in allowed:
                bad(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

        if self.logit_softcap is not None and not (self.logit_softcap > 0 and math.isfinite(self.logit_softcap)):
            bad(f"logit_softcap must be a positive number or none, got {self.logit_softcap!r}")
        if self.doc_mask_token is not None and not 0 <= self.doc_mask_token < self.vocab_size:
            bad(f"doc_mask_token must be a token id below vocab_size ({self.vocab_size}), got {self.doc_mask_token!r}")

    # -- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"model config: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def replace(self, **overrides) -> "ModelConfig":
        return ModelConfig.from_dict({**self.to_dict(), **overrides})


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


# ------------------------------------------------------------------ presets
# One row per preset: name -> fields that differ from ModelConfig's defaults.
# The paper's released shapes (roneneldan/TinyStories-*), all 16 heads, window 256.
_PAPER = {
    "1M": dict(hidden=64, layers=8),
    "3M": dict(hidden=128, layers=8),
    "8M": dict(hidden=256, layers=8),
    "28M": dict(hidden=512, layers=8),
    "33M": dict(hidden=768, layers=4),
    "1Layer-21M": dict(hidden=1024, layers=1, attention="global"),
    "2Layers-33M": dict(hidden=1024, layers=2, attention=["global", "local"]),
}

PRESETS: dict[str, dict] = {}
for _name, _row in _PAPER.items():
    PRESETS[_name] = dict(heads=16, **_row)
for _name, _row in _PAPER.items():  # head size 64: heads = hidden / 64
    PRESETS[f"{_name}-hs64"] = dict(_row, heads=max(1, _row["hidden"] // 64))
# The seed's nanoGPT configuration: meant to be 10M, really 30M because of the 50K vocabulary.
PRESETS["seed-nanogpt"] = dict(hidden=384, layers=6, heads=6, context=256, dropout=0.2,
                               vocab_size=50304, attention="global", scale_attn=True)


def preset_config(name: str, **overrides) -> ModelConfig:
    """The named preset, with any field overridden (vocab_size, context, dropout, heads, ...)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters split as the paper's sizes need: token embedding, positions, and the rest.

    With tied embeddings the output layer is the embedding, so it is not counted twice.
    """
    h, f = cfg.hidden, cfg.mlp_width
    norm = 2 * h if cfg.norm == "layernorm" else h
    attn = 3 * h * h + h * h + h                   # q, k, v (no bias) + out_proj (bias)
    mlp = 3 * h * f if cfg.mlp == "swiglu" else (h * f + f + f * h + h)
    scalars = int(cfg.value_embeddings) + 2 * int(cfg.x0_mix)   # per layer: ve_gain, x_gains
    rest = cfg.layers * (2 * norm + attn + mlp + scalars) + norm
    if not cfg.tie_embeddings:
        rest += cfg.vocab_size * h
    if cfg.value_embeddings:
        rest += cfg.vocab_size * h
    emb = cfg.vocab_size * h
    pos = cfg.context * h if cfg.position == "learned" else 0
    return {"embedding": emb, "position": pos, "rest": rest, "total": emb + pos + rest}


def presets_table(vocab_size: int | None = None, names: list[str] | None = None, **overrides) -> list[dict]:
    """One row per preset: its shape and `parameter_counts`, at `vocab_size` (default: the paper's 10K).

    A preset that pins its own vocabulary (seed-nanogpt: GPT-2's 50,304) keeps it unless
    `vocab_size` is given: that vocabulary is what makes its "10M" model 30M.
    """
    rows = []
    for name in names or list(PRESETS):
        vocab = vocab_size if vocab_size is not None else PRESETS.get(name, {}).get("vocab_size", PAPER_VOCAB)
        cfg = preset_config(name, vocab_size=vocab, **overrides)
        types = cfg.layer_types
        attention = cfg.attention if isinstance(cfg.attention, str) else ",".join(types)
        rows.append({"preset": name, "hidden": cfg.hidden, "layers": cfg.layers, "heads": cfg.heads,
                     "head_dim": cfg.head_dim, "attention": attention, "window": cfg.window,
                     "vocab_size": cfg.vocab_size, "context": cfg.context, **parameter_counts(cfg)})
    return rows
