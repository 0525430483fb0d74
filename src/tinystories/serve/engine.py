"""The batching engine: every request being served decodes in one loop, one token per row per step.

Continuous batching on the model's own KV cache: a request that arrives while others decode is
prefilled alone (the model's `forward` with a fresh `KVCache`), its keys and values are copied into
a free row of the engine's cache, and from the next step on it decodes beside the others. Each row
keeps its own position (its prompt starts at slot 0), so rows of any length share a step: the step
is the model's block arithmetic with per-row positions and a per-row attention mask, written with
the model's own modules (`decode_step`). A row that finishes, or whose client went away, leaves at
once: the last row moves into its place, so that live rows are always rows 0..n-1 of the cache.

The engine runs in one thread. The web layer submits `Job`s and reads their events through a
callback (`Job.emit`), which it makes thread-safe.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..data.tokenizer import Tokenizer
    from ..model.gpt_neo import GPTNeo


class QueueFull(Exception):
    """No room in the queue: the caller answers 429 with Retry-After."""


class ShuttingDown(Exception):
    """The engine no longer takes jobs: the caller answers 503."""


@dataclass
class Sampling:
    """One request's decoding settings (already checked by the web layer)."""
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None   # None: none; k >= 0: the chosen token's log-prob and the top k
    ignore_eos: bool = False      # decode max_tokens tokens even past <|endoftext|> (benchmarks)


@dataclass
class TokenInfo:
    token: str                    # the token's own text (may be part of a UTF-8 character: U+FFFD)
    token_id: int
    logprob: float
    top: list[tuple[str, int, float]]  # (text, id, log-prob) of the most likely tokens, best first


# Events a Job receives, in order per choice:
#   ("text", choice, new_text, [TokenInfo...])   text released since the last event and its tokens
#   ("done", choice, finish_reason, completion_tokens)   finish_reason: "stop" or "length"
#   ("error", None, message, None)   the engine failed on this job; no more events follow
Event = tuple


class Job:
    """One API request: a prompt and its `n` choices."""

    def __init__(self, prompt_ids: list[int], sampling: Sampling, emit: Callable[[Event], None]):
        self.prompt_ids, self.sampling, self.emit = prompt_ids, sampling, emit
        self.cancelled = False   # set by the web layer when the client goes away
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        self.cancelled = True


class _Row:
    """One choice of one job, decoding in row `index` of the engine's cache."""

    def __init__(self, job: Job, choice: int, length: int, tokenizer: Tokenizer, device):
        import torch

        self.job, self.choice, self.pos = job, choice, length  # pos: the slot the next fed token takes
        self.out: list[int] = []
        self.text, self.sent = "", 0           # decoded text and how much of it was released
        self.clean = 0                         # tokens decoded into `text` (ending on a whole character)
        self.pending_info: list[TokenInfo] = []
        self.tokenizer = tokenizer
        self.rng = None
        if job.sampling.temperature > 0:
            self.rng = torch.Generator(device=device)
            seed = job.sampling.seed if job.sampling.seed is not None else int(torch.randint(0, 2**62, (1,)))
            self.rng.manual_seed((seed * 1_000_003 + choice) % 2**63)  # one stream per (seed, choice)

    def push(self, token: int, info: TokenInfo | None) -> str | None:
        """Take one new token; returns a finish reason when the row is done, else None."""
        s = self.job.sampling
        self.out.append(token)
        if info is not None:
            self.pending_info.append(info)
        # decode only the tokens since the last whole character: O(1) per token, not O(length)
        tail = self.tokenizer.decode(self.out[self.clean:])
        if not tail.endswith("\ufffd"):  # an incomplete UTF-8 character waits for its next byte
            self.text, self.clean = self.text + tail, len(self.out)
        for stop in s.stop:
            at = self.text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                self.text = self.text[:at]
                self._release(len(self.text))
                return "stop"
        if len(self.out) >= s.max_tokens:
            self.text += tail if self.clean < len(self.out) else ""
            self._release(len(self.text))
            return "length"
        self._release(len(self.text) - _held_back(self.text, s.stop))
        return None

    def _release(self, upto: int) -> None:
        if upto > self.sent or self.pending_info:
            piece, self.sent = self.text[self.sent:max(upto, self.sent)], max(upto, self.sent)
            self.job.emit(("text", self.choice, piece, self.pending_info))
            self.pending_info = []

    def finish(self, reason: str) -> None:
        self._release(len(self.text))
        self.job.emit(("done", self.choice, reason, len(self.out)))


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of `text` that may be the start of a stop string, so not yet released."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class Engine:
    """Decodes every submitted job in one batched loop on a background thread."""

    def __init__(self, model: GPTNeo, tokenizer: Tokenizer, *, max_batch: int = 64, max_queue: int = 256):
        import torch

        cfg = model.config
        # decode_step below writes out the GPT-Neo / modern block; these options change that arithmetic
        # (zero_init changes only the initial weights, relu2 lives inside block.mlp), so they are refused
        # rather than served with wrong logits.
        unsupported = [o for o in cfg.block_options if o not in ("zero_init", "mlp=relu2")]
        if unsupported:
            from ..errors import UserError

            raise UserError(f"serve does not run models with {', '.join(unsupported)} yet; "
                            "use tinystories generate for this model")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        p = model.wte.weight
        shape = (max_batch, cfg.heads, cfg.context, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.layers)]
        self.rows: list[_Row] = []
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closing = False
        self.steps = 0
        self.texts: dict[int, str] = {}  # token id -> its text, for logprobs
        self.tokens_out = 0
        self.thread = threading.Thread(target=self._run, name="tinystories-engine", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ the web layer's side

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.closing:
                raise ShuttingDown()
            if len(self.pending) >= self.max_queue:
                raise QueueFull()
            self.pending.append(job)
            self.cond.notify()

    def load(self) -> dict:
        return {"rows": len(self.rows), "queued": len(self.pending), "max_batch": self.max_batch,
                "max_queue": self.max_queue, "steps": self.steps, "tokens": self.tokens_out}

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, cancel the ones still queued or decoding, and join the thread."""
        with self.cond:
            self.closing = True
            for job in self.pending:
                job.emit(("error", None, "the server is shutting down", None))
            self.pending.clear()
            for row in self.rows:
                row.job.cancel()
            self.cond.notify()
        self.thread.join(timeout)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self.cond:
                    while not self.pending and not self.rows and not self.closing:
                        self.cond.wait()
                    if self.closing and not self.rows:
                        return
                    admitted = []
                    while self.pending and len(self.rows) + sum(j.sampling.n for j in admitted) \
                            + self.pending[0].sampling.n <= self.max_batch:
                        admitted.append(self.pending.popleft())
                for job in admitted:
                    self._guard(job, self._admit)
                self._drop_cancelled()
                if self.rows:
                    try:
                        self._step()
                    except Exception as e:  # noqa: BLE001 - one bad step must not take the server down
                        for row in self.rows:
                            row.job.emit(("error", None, f"decoding failed: {e}", None))
                        self.rows.clear()

    def _guard(self, job: Job, fn) -> None:
        try:
            fn(job)
        except Exception as e:  # noqa: BLE001
            self.rows = [r for r in self.rows if r.job is not job]
            job.emit(("error", None, f"decoding failed: {e}", None))

    def _admit(self, job: Job) -> None:
        """Prefill the prompt once, copy its keys and values into `n` free rows, take each row's first token."""
        import torch

        if job.cancelled:
            return
        ids = torch.tensor([job.prompt_ids], device=self.model.wte.weight.device)
        T = ids.size(1)
        cache = self.model.new_cache(1, T)
        logits = self.model(ids, cache=cache, start=0, last_only=True)[:, -1]
        new = []
        for choice in range(job.sampling.n):
            r = len(self.rows)
            for layer in range(len(self.k)):
                self.k[layer][r, :, :T] = cache.k[layer][0]
                self.v[layer][r, :, :T] = cache.v[layer][0]
            row = _Row(job, choice, T, self.tokenizer, ids.device)
            self.rows.append(row)
            new.append(row)
        self._take(new, logits.expand(len(new), -1))

    def _step(self) -> None:
        import torch

        dev = self.model.wte.weight.device
        tokens = torch.tensor([r.out[-1] for r in self.rows], device=dev)
        pos = torch.tensor([r.pos for r in self.rows], device=dev)
        n = len(self.rows)
        logits = decode_step(self.model, tokens, pos, [k[:n] for k in self.k], [v[:n] for v in self.v])
        for r in self.rows:
            r.pos += 1
        self.steps += 1
        self._take(list(self.rows), logits)

    def _take(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Choose each row's next token from its logits, hand it to the row, retire finished rows."""
        chosen = choose_tokens(logits, [r.job.sampling for r in rows], [r.rng for r in rows])
        infos = token_infos(logits, chosen, [r.job.sampling.logprobs for r in rows], self._token_text)
        eot = self.tokenizer.eot_id
        done = []
        for row, t, info in zip(rows, chosen, infos):
            if t == eot and not row.job.sampling.ignore_eos:
                done.append((row, "stop"))
                continue
            self.tokens_out += 1
            reason = row.push(t, info)
            if reason is not None:
                done.append((row, reason))
        for row, reason in done:
            row.finish(reason)
            self._remove(row)

    def _token_text(self, token: int) -> str:
        text = self.texts.get(token)
        if text is None:
            text = self.texts[token] = self.tokenizer.decode([token])
        return text

    def _drop_cancelled(self) -> None:
        for row in [r for r in self.rows if r.job.cancelled]:
            self._remove(row)

    def _remove(self, row: _Row) -> None:
        """Row leaves; the last row moves into its place (its keys and values with it)."""
        i, last = self.rows.index(row), len(self.rows) - 1
        if i != last:
            moved = self.rows[last]
            for kv in (*self.k, *self.v):
                kv[i, :, :moved.pos] = kv[last, :, :moved.pos]
            self.rows[i] = moved
        self.rows.pop()


def decode_step(model: GPTNeo, tokens: torch.Tensor, pos: torch.Tensor, ks: list, vs: list) -> torch.Tensor:
    """Feed tokens[b] at slot/position pos[b] of row b; logits [B, V] for the next token of each row.

    The arithmetic of `GPTNeo.forward` for one token per row, through the model's own modules, but
    with a position per row: each row's new key and value go to its own slot, and a row attends to
    its slots 0..pos[b] (a local layer to the last `window` of them). `ks`/`vs`: per layer, the
    cache [B, heads, context, head_dim].
    """
    import torch
    import torch.nn.functional as F

    from ..model.gpt_neo import apply_rope

    B = tokens.size(0)
    x = model.wte(tokens)[:, None]                                   # [B, 1, C]
    if model.wpe is not None:
        x = x + model.wpe(pos)[:, None]
        rope = None
    else:
        rope = (model.rope_cos[pos][:, None, None], model.rope_sin[pos][:, None, None])  # [B, 1, 1, D/2]
    S = int(pos.max()) + 1
    slots = torch.arange(S, device=tokens.device)
    seen = slots[None, :] <= pos[:, None]                            # [B, S]
    rows = torch.arange(B, device=tokens.device)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        q, k, v = attn.qkv(block.ln_1(x)).view(B, 1, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        ks[i][rows, :, pos] = k[:, :, 0]
        vs[i][rows, :, pos] = v[:, :, 0]
        mask = seen if attn.window is None else seen & (slots[None, :] > pos[:, None] - attn.window)
        y = F.scaled_dot_product_attention(q, ks[i][:, :, :S], vs[i][:, :, :S], attn_mask=mask[:, None, None],
                                           scale=attn.scale)
        x = x + attn.out_proj(y.transpose(1, 2).reshape(B, 1, -1))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x[:, 0]))


def choose_tokens(logits: torch.Tensor, settings: list[Sampling], rngs: list) -> list[int]:
    """Next token per row: argmax at temperature 0, else a draw after temperature, top-k and top-p.

    All sampled rows draw at once (one uniform number from each row's own generator, then the
    inverse of the batch's cumulative distributions): per-row `torch.multinomial` calls cost more
    than the model's whole step at 16 rows. A row's draws depend only on its seed and its logits.
    """
    import torch

    out = logits.argmax(-1)
    idx = [r for r, s in enumerate(settings) if s.temperature > 0]
    if not idx:
        return out.tolist()
    V = logits.size(-1)
    temps = torch.tensor([settings[r].temperature for r in idx], device=logits.device)
    x = logits[idx].float() / temps[:, None]
    order = None
    if any(settings[r].top_k or (settings[r].top_p or 1.0) < 1.0 for r in idx):
        x, order = x.sort(-1, descending=True)
        rank = torch.arange(V, device=x.device)[None, :]
        ks = torch.tensor([settings[r].top_k or V for r in idx], device=x.device)
        drop = rank >= ks[:, None]
        probs = x.masked_fill(drop, float("-inf")).softmax(-1)
        ps = torch.tensor([settings[r].top_p or 2.0 for r in idx], device=x.device)  # 2.0: no top-p
        drop |= probs.cumsum(-1) - probs >= ps[:, None]  # the mass of the more likely tokens
        x = x.masked_fill(drop, float("-inf"))
    cdf = x.softmax(-1).cumsum(-1)
    u = torch.cat([torch.rand(1, generator=rngs[r], device=x.device) for r in idx])
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=V - 1)
    if order is not None:
        pick = order.gather(1, pick)
    out[idx] = pick[:, 0]
    return out.tolist()


def token_infos(logits: torch.Tensor, chosen: list[int], wanted: list[int | None],
                text_of: Callable[[int], str]) -> list[TokenInfo | None]:
    """Log-probs (of the model's distribution, before temperature) for the rows that asked for them."""
    idx = [r for r, w in enumerate(wanted) if w is not None]
    out: list[TokenInfo | None] = [None] * len(chosen)
    if not idx:
        return out
    logp = logits[idx].float().log_softmax(-1)
    k = max(max(wanted[r] for r in idx), 1)
    top_v, top_i = logp.topk(min(k, logp.size(-1)), dim=-1)
    top_v, top_i = top_v.tolist(), top_i.tolist()
    for j, r in enumerate(idx):
        lp = float(logp[j, chosen[r]])
        top = [(text_of(t), t, _finite(v)) for t, v in zip(top_i[j][:wanted[r]], top_v[j][:wanted[r]])]
        out[r] = TokenInfo(text_of(chosen[r]), chosen[r], _finite(lp), top)
    return out


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -inf; OpenAI clients expect a number
