"""Generation: greedy, sampling (temperature, top-k, top-p) and beam search, with a KV cache.

Prompts are decoded together as rows of one batch. Rows are left-padded to a common
length and share one preallocated KV cache (`GPTNeo.new_cache`); the model places each
row's tokens at their own positions and hides the padding, so a row's completion does not
depend on the other rows. Every prompt starts with <|endoftext|>: in the training data
every story follows one, so an empty prompt starts a fresh story.

When prompt plus completion outgrow the model's context, the rows slide: the last
`context - context // 4` tokens are fed again at fresh positions 0.. and decoding goes on.

Beam search follows `transformers`' `generate(num_beams=B, do_sample=False)` step by step
(2B candidates a step, length penalty 1.0, early_stopping=False and its stopping heuristic),
so that both give the same text on the same weights.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used, so that option errors come before it loads
    import torch

    from ..model.gpt_neo import GPTNeo
    from ..data.tokenizer import Tokenizer

# on_text(prompt_index, sample_index, new_text): the streaming callback.
TextCallback = Callable[[int, int, str], None]


@dataclass
class Completion:
    text: str                   # the new text only (not the prompt, not the final <|endoftext|>)
    tokens: list[int]           # the new token ids, likewise
    finish_reason: str          # "eot" (the model ended the story) or "length" (max_new_tokens)
    score: float | None = None  # beam search: sum of log-probs / length (transformers' beam score)


# Every completion is held (and its row's sampler state set up) before any is returned, so memory grows with
# --num-samples: 1,000,000 reached 7 GB before the first token. 10,000 stories of a 512-token context stay
# within tens of MB, and more than a GPT-Eval-sized sample per prompt is better made by several seeded runs.
MAX_NUM_SAMPLES = 10_000


def check_options(*, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                  num_beams: int, num_samples: int) -> None:
    """A UserError naming the option for any setting outside its range."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature is None or not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    if num_beams < 1:
        raise UserError(f"--num-beams must be at least 1, got {num_beams}")
    if num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {num_samples}")
    if num_samples > MAX_NUM_SAMPLES:
        raise UserError(f"--num-samples {num_samples}: at most {MAX_NUM_SAMPLES:,} per prompt; for more, run again "
                        "with other --seed values")
    if num_beams > 1:
        if num_samples > num_beams:
            raise UserError(f"--num-samples ({num_samples}) cannot exceed --num-beams ({num_beams}): "
                            "beam search returns the best num-samples of its beams")
        if top_k is not None or top_p is not None:
            raise UserError("--top-k/--top-p apply to sampling; beam search (--num-beams > 1) is deterministic")


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """<|endoftext|> then the prompt's tokens: how a story starts in the training data."""
    return [tokenizer.eot_id] + (tokenizer.encode(prompt) if prompt else [])


def encode_prompts(tokenizer: Tokenizer, prompts: list[str], context: int) -> list[list[int]]:
    """`prompt_ids` of each prompt; a UserError for one that leaves no room to generate."""
    seqs = [prompt_ids(tokenizer, p) for p in prompts]
    for i, s in enumerate(seqs):
        if len(s) >= context:
            which = f"prompt {i + 1}" if len(seqs) > 1 else "the prompt"
            raise UserError(f"{which} is {len(s)} tokens (with the leading <|endoftext|>) but the model's "
                            f"context is {context}: no room left to generate; shorten it")
    return seqs


def generate(model: GPTNeo, tokenizer: Tokenizer, prompts: list[str] | str, *, max_new_tokens: int = 256,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             num_beams: int = 1, num_samples: int = 1, seed: int | None = None,
             on_text: TextCallback | None = None, batch_size: int = 32, lookup: int = 8,
             draft: str = "auto") -> list[list[Completion]]:
    """Complete each prompt; returns, per prompt, `num_samples` completions.

    temperature 0 is greedy; `num_beams` > 1 is beam search (deterministic; its best
    `num_samples` beams, best first). A `seed` makes sampling repeatable: row (prompt, j)
    draws from its own generator seeded by (seed, j), so a prompt's samples do not depend on
    the batch it is in. `on_text` streams new text as it is decoded (not for beam search).
    `batch_size` bounds the rows (prompts x samples or beams) decoded at once.

    Greedy decoding of a single sequence drafts up to `lookup` tokens by finding the
    last few tokens earlier in the text (stories repeat names and phrases) and checks
    them all in one forward pass: the output is the greedy output, made with fewer passes
    over the weights. When the text offers no draft, an int8 copy of the model drafts
    (`draft`: "auto" = for models big enough that a pass costs its weights' bytes, on a CPU
    with the compiled kernels; "on"; "off"), as far as the measured acceptance pays.
    `lookup=0, draft="off"` decodes one token per pass.
    """
    import torch

    if isinstance(prompts, str):
        prompts = [prompts]
    check_options(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  num_beams=num_beams, num_samples=num_samples)
    seqs = encode_prompts(tokenizer, prompts, model.config.context)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if temperature > 0 else 0

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _generate(model, tokenizer, seqs, max_new_tokens, temperature, top_k, top_p,
                             num_beams, num_samples, seed, on_text, batch_size, lookup, draft)
    finally:
        model.train(was_training)


def _generate(model, tokenizer, seqs, max_new_tokens, temperature, top_k, top_p, num_beams, num_samples,
              seed, on_text, batch_size, lookup, draft) -> list[list[Completion]]:
    per_prompt = num_beams if num_beams > 1 else num_samples
    results: list[list[Completion]] = [[] for _ in seqs]
    # rope models cannot shift positions per row, so only equal-length prompts share a batch
    for chunk in _chunks(seqs, max(1, batch_size // per_prompt), same_length=model.wpe is None):
        if num_beams > 1:
            done = _beam_search(model, tokenizer.eot_id, [seqs[i] for i in chunk], num_beams, max_new_tokens)
            for i, beams in zip(chunk, done):
                results[i] = [_completion(tokenizer, *b) for b in beams[:num_samples]]
            continue
        rows = [(i, j) for i in chunk for j in range(num_samples)]
        rngs = [_row_generator(seed, j, model.wte.weight.device) for _, j in rows]
        stream = _streamer(on_text, tokenizer, rows) if on_text is not None else None
        drafter = _draft_weights(model, draft) if len(rows) == 1 and temperature == 0 else None
        # on CUDA, one-token steps replayed from a graph beat verifying drafts in eager passes
        graphs = _graphs_enabled(model)
        if len(rows) == 1 and temperature == 0 and (lookup > 0 or drafter is not None) and not graphs:
            outs = [_greedy_lookup(model, tokenizer.eot_id, seqs[rows[0][0]], max_new_tokens, lookup, stream, drafter)]
        else:
            outs = _sample(model, tokenizer.eot_id, [seqs[i] for i, _ in rows], max_new_tokens,
                           temperature, top_k, top_p, rngs, stream)
        for (i, _), (toks, reason) in zip(rows, outs):
            results[i].append(_completion(tokenizer, toks, reason))
    return results


def read_prompts(path) -> list[str]:
    """Prompts from a file: a YAML or JSON list (or {"prompts": [...]}), JSONL, or text.

    Items are strings or {"prompt": ...}. In a text file each line is a prompt, unless the
    file has blank lines: then each blank-line-separated block is one (a prompt may span lines).
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prompts {path}: no such file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            items = yaml.safe_load(text)
        elif suffix == ".json":
            items = json.loads(text)
        elif suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            lines = [line.rstrip() for line in text.strip("\n").splitlines()]
            if "" in lines:  # blank-line-separated blocks
                items = [b.strip("\n") for b in "\n".join(lines).split("\n\n") if b.strip()]
            else:
                items = [line for line in lines if line.strip()]
    except Exception as e:  # yaml / json syntax errors, in one line
        raise UserError(f"--prompts {path}: cannot parse ({str(e).splitlines()[0]})") from None
    if isinstance(items, dict) and "prompts" in items:
        items = items["prompts"]
    if items is None:
        items = []
    if not isinstance(items, list):
        raise UserError(f"--prompts {path}: expected a list of prompts, got {type(items).__name__}")
    prompts = []
    for k, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            item = item["prompt"]
        if not isinstance(item, str):
            raise UserError(f"--prompts {path}: item {k + 1} is not a string or {{\"prompt\": ...}}")
        prompts.append(item)
    if not prompts:
        raise UserError(f"--prompts {path}: the file holds no prompts")
    return prompts


# ---------------------------------------------------------------------------- decoding state

class _Rows:
    """Token rows decoded together: left-padded, one KV cache, sliding past the context."""

    def __init__(self, model: GPTNeo, seqs: list[list[int]], max_new_tokens: int, fill: int):
        import torch

        from . import fast

        ctx = model.config.context
        dev = model.wte.weight.device
        longest = max(map(len, seqs))
        self.model = model
        self.cap = min(ctx, longest + max_new_tokens)  # cache slots ever needed (<= context)
        self.keep = max(0, min(ctx - max(1, ctx // 4), self.cap - 1))  # tokens kept when sliding
        self.ids = torch.full((len(seqs), self.cap), fill, dtype=torch.long, device=dev)
        for r, s in enumerate(seqs):
            self.ids[r, longest - len(s):longest] = torch.tensor(s, dtype=torch.long)
        self.pad = torch.tensor([longest - len(s) for s in seqs], dtype=torch.long, device=dev)
        self._pad = self.pad if longest > min(map(len, seqs)) else None
        self.n = longest  # slots filled
        self.weights = fast.decode_weights(model)
        # a bf16 model on a CPU decodes with fp32 activations, so its cache is fp32 too
        self.cache = model.new_cache(len(seqs), self.cap, dtype=self.weights.cache_dtype if self.weights else None)
        self.decode = functools.partial(fast.decode, model)  # (idx, cache, start, pad, last_only, weights)
        self.graph = None  # _CudaGraphStep on CUDA, built at the first step (and again after a reorder)

    def prefill(self) -> torch.Tensor:
        """Logits [rows, V] after the prompts."""
        return self.decode(self.ids[:, :self.n], self.cache, 0, self._pad, weights=self.weights)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; logits [rows, V] for the next."""
        if self.n == self.cap:
            self._slide()
        self.ids[:, self.n] = tokens
        if _graphs_enabled(self.model):
            if self.graph is None:
                self.graph = _CudaGraphStep(self, tokens)
            logits = self.graph(tokens, self.n)
        else:
            logits = self.decode(tokens[:, None], self.cache, self.n, self._pad, weights=self.weights)
        self.n += 1
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows `index` of before (beams that moved, finished rows dropped)."""
        self.ids, self.pad = self.ids[index], self.pad[index]
        self._pad = self.pad if self._pad is not None and bool(self.pad.any()) else None
        self.cache.reorder(index, upto=self.n)
        self.graph = None  # the batch, and maybe the cache tensors, changed

    def _slide(self) -> None:
        # The context is full: keep the last `keep` tokens and feed them again at positions 0..keep-1.
        drop = self.n - self.keep
        self.ids[:, :self.keep] = self.ids[:, drop:self.n].clone()
        self.pad = (self.pad - drop).clamp(min=0)
        self._pad = self.pad if bool(self.pad.any()) else None
        self.graph = None  # padding changed
        self.n = self.keep
        if self.keep:
            self.decode(self.ids[:, :self.keep], self.cache, 0, self._pad, weights=self.weights)


def _graphs_enabled(model) -> bool:
    """CUDA graphs for one-token steps: on CUDA, for GPT-Neo blocks, unless TINYSTORIES_CUDA_GRAPHS=0."""
    import os

    return (model.wte.weight.device.type == "cuda" and model.config.is_paper_block
            and os.environ.get("TINYSTORIES_CUDA_GRAPHS", "1") != "0")


class _CudaGraphStep:
    """One decoding step of a _Rows batch, captured once as a CUDA graph and replayed per token.

    Small models decode in far less GPU time than it takes to launch their ~15 kernels per layer;
    a replay launches them all at once. The captured pass is `fast.decode_static`: the token ids
    and the slot are read from device tensors that each call overwrites. Built at the first step
    with that step's real token and slot, so the warm-up passes write exactly the keys and values
    the step itself writes. (Written for CUDA and checked on CPU through decode_static; this
    repository's machine has no GPU to run the capture on.)
    """

    def __init__(self, rows: "_Rows", tokens: torch.Tensor):
        import torch

        from . import fast

        model = rows.model
        self.tok = tokens.detach().clone().view(-1, 1)
        self.pos = torch.full((), rows.n, dtype=torch.long, device=self.tok.device)
        run = lambda: fast.decode_static(model, self.tok, rows.cache, self.pos, rows._pad, rows.weights)  # noqa: E731
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run()

    def __call__(self, tokens: torch.Tensor, n: int) -> torch.Tensor:
        self.tok.copy_(tokens.view(-1, 1))
        self.pos.fill_(n)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites `out`


def _sample(model, eot: int, seqs, max_new_tokens, temperature, top_k, top_p, rngs, stream):
    """Greedy or sampled decoding; rows leave the batch as they finish. -> [(tokens, reason)]."""
    import torch

    rows = _Rows(model, seqs, max_new_tokens, fill=eot)
    logits = rows.prefill()
    alive = list(range(len(seqs)))  # original row of each current row
    out: list[list[int]] = [[] for _ in seqs]
    reason = ["length"] * len(seqs)
    for step in range(max_new_tokens):
        nxt = _choose(logits, temperature, top_k, top_p, [rngs[r] for r in alive])
        finished = []
        for k, (r, t) in enumerate(zip(alive, nxt.tolist())):
            if t == eot:
                reason[r] = "eot"
                finished.append(k)
            else:
                out[r].append(t)
                if stream is not None:
                    stream(r, t)
        if step == max_new_tokens - 1:
            break
        if finished:
            keep = [k for k in range(len(alive)) if k not in finished]
            if not keep:
                break
            index = torch.tensor(keep, device=nxt.device)
            rows.reorder(index)
            nxt, alive = nxt[index], [alive[k] for k in keep]
        logits = rows.step(nxt)
    return list(zip(out, reason))


def _greedy_lookup(model, eot: int, seq: list[int], max_new_tokens: int, lookup: int, stream,
                   draft_weights: list | None = None):
    """Greedy decoding of one sequence with drafted tokens, all verified in one pass.

    The tokens fed at each pass are [last token, draft...]; the model's argmax after each
    of them says how many drafts were right, and adds one token of its own beyond them, so
    the output is the greedy output whatever the drafts were. Drafts come from the text
    itself when its last tokens occurred before (free), else, with `draft_weights` (the int8
    copy of the model), from a few cheap passes of that copy, as many as the measured
    acceptance and costs say pay.
    """
    import time

    import torch

    rows = _Rows(model, [seq], max_new_tokens, fill=eot)
    index = _NgramIndex(seq)
    nxt = int(rows.prefill()[0].argmax())
    out: list[int] = []
    size = max(1, lookup // 2)  # text draft length: grows while drafts are right, shrinks when not
    pause = 0                   # after text drafts that all failed, skip them for this many passes
    cost = _DraftCost()
    while True:
        if nxt == eot:
            return out, "eot"
        out.append(nxt)
        index.append(nxt)
        if stream is not None:
            stream(0, nxt)
        if len(out) == max_new_tokens:
            return out, "length"
        if rows.n == rows.cap:
            rows._slide()
        # a pass yields the accepted drafts plus one token: never more than is wanted or fits
        room = min(max_new_tokens - len(out) - 1, rows.cap - rows.n - 1)
        drafts = index.draft(min(size, room)) if lookup and room > 0 and not pause else []
        pause = max(0, pause - 1)
        from_model = False
        if not drafts and draft_weights is not None and room > 0 and (k := min(cost.best_k(), room)) > 0:
            t0 = time.perf_counter()
            drafts, from_model = _draft(model, rows, nxt, k, draft_weights, eot), True
            cost.drafted(len(drafts), time.perf_counter() - t0)
        feed = [nxt] + drafts
        fed = torch.tensor([feed], device=rows.ids.device)
        rows.ids[:, rows.n:rows.n + len(feed)] = fed
        t0 = time.perf_counter()
        preds = rows.decode(fed, rows.cache, rows.n, last_only=False, weights=rows.weights)[0]
        preds = preds.argmax(-1).tolist()
        cost.verified(len(feed), time.perf_counter() - t0)
        ok = 0
        while ok < len(feed) - 1 and feed[ok + 1] == preds[ok]:
            ok += 1
        rows.n += 1 + ok  # cache slots past this hold rejected drafts; later tokens overwrite them
        if from_model:
            cost.accepted(ok, len(drafts))
        elif len(feed) > 1:
            if ok == len(feed) - 1:
                size = min(lookup, size + 2)
            elif ok == 0:
                size, pause = max(1, size // 2), (4 if size == 1 else 0)
            else:
                size = max(1, size - 1)
        for t in feed[1:1 + ok]:
            if t == eot:
                return out, "eot"
            out.append(t)
            index.append(t)
            if stream is not None:
                stream(0, t)
        nxt = preds[ok]


DRAFT_MIN_WEIGHTS = 4_000_000  # below this, a pass costs its per-layer overhead, not its weights: no draft


def _draft_weights(model, draft: str) -> list | None:
    """The int8 copy's weights for drafting, when it can be built and may pay ("auto"), or "on"."""
    from ..kernels import cpu as kernels
    from . import fast

    if draft == "off" or not kernels.attention_available() or model.wte.weight.device.type != "cpu":
        return None
    big = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wpe" not in n)
    if draft == "auto" and big < DRAFT_MIN_WEIGHTS:
        return None
    return fast.decode_weights(model, int8=True)


def _draft(model, rows: _Rows, token: int, k: int, weights: list, eot: int) -> list[int]:
    """Up to k greedy tokens from the int8 copy, after `token` at slot rows.n. Its keys and values
    go into the cache slots that the verifying pass then overwrites with the exact ones."""
    import torch

    drafts: list[int] = []
    t = torch.tensor([[token]], device=rows.ids.device)
    for i in range(k):
        t = rows.decode(t, rows.cache, rows.n + i, weights=weights).argmax(-1, keepdim=True)
        drafts.append(int(t))
        if drafts[-1] == eot:
            break
    return drafts


class _DraftCost:
    """Running estimates that decide how many tokens the int8 copy drafts: the share of its drafts
    that verification accepts, the time of a draft pass, and the time of a verifying pass as a
    function of the tokens it feeds (one, plus a slope per extra token)."""

    def __init__(self, max_k: int = 8):
        self.max_k = max_k
        self.hits, self.tries = 4.0, 5.0      # prior: 80% of drafts accepted
        self.t_draft = self.t_one = self.slope = None
        self.idle = 0                        # passes since drafting last looked worth it

    @staticmethod
    def _ema(old, new, w=0.2):
        return new if old is None else (1 - w) * old + w * new

    def drafted(self, n: int, seconds: float) -> None:
        if n:
            self.t_draft = self._ema(self.t_draft, seconds / n)

    def verified(self, n: int, seconds: float) -> None:
        if n == 1:
            self.t_one = self._ema(self.t_one, seconds)
        elif self.t_one is not None:
            self.slope = self._ema(self.slope, max(0.0, seconds - self.t_one) / (n - 1))

    def accepted(self, ok: int, drafted: int) -> None:
        # forget slowly, so that a stretch of hard text turns drafting down and easy text up again
        self.hits, self.tries = 0.95 * self.hits + ok, 0.95 * self.tries + drafted

    def best_k(self) -> int:
        """Draft length with the most tokens per second expected; 0 when drafting does not pay
        (then one short draft every 16 passes keeps the estimates fresh)."""
        if self.t_one is None:
            return 0 if self.t_draft is not None else 2  # measure a plain pass, and a draft pass, first
        if self.t_draft is None:
            return 2
        a = min(self.hits / self.tries, 0.99)
        slope = self.slope if self.slope is not None else 0.1 * self.t_one
        best_k, best_rate = 0, 1.0 / self.t_one
        for k in range(1, self.max_k + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (k * self.t_draft + self.t_one + k * slope)
            if rate > best_rate:
                best_k, best_rate = k, rate
        self.idle = self.idle + 1 if best_k == 0 else 0
        return 1 if self.idle and self.idle % 16 == 0 else best_k


class _NgramIndex:
    """Where each of the last 1..3-token contexts last occurred, to draft what followed it."""

    def __init__(self, tokens: list[int], longest: int = 3):
        self.tokens: list[int] = []
        self.seen = [dict() for _ in range(longest)]  # seen[n-1][ngram] = index of the token after it
        for t in tokens:
            self.append(t)

    def append(self, token: int) -> None:
        p = len(self.tokens)
        for n, seen in enumerate(self.seen, start=1):
            if p >= n:
                seen[tuple(self.tokens[p - n:p])] = p
        self.tokens.append(token)

    def draft(self, k: int, shortest: int = 2) -> list[int]:
        toks = self.tokens
        for n in range(len(self.seen), shortest - 1, -1):  # one matching token is too weak a cue
            p = self.seen[n - 1].get(tuple(toks[-n:])) if len(toks) >= n else None
            if p is not None:
                # copy what followed; past the end, keep copying with the same period (loops)
                draft: list[int] = []
                for i in range(k):
                    j = p + i
                    draft.append(toks[j] if j < len(toks) else draft[j - len(toks)])
                return draft
        return []


def _choose(logits: torch.Tensor, temperature: float, top_k, top_p, rngs) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else a draw after temperature, top-k, top-p."""
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Keep the most likely tokens until their mass reaches top_p (at least one).
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        sorted_drop = probs.cumsum(-1) - probs >= top_p  # mass of the more likely tokens
        drop = torch.zeros_like(sorted_drop).scatter(-1, order, sorted_drop)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(rngs)])


def _row_generator(seed: int, sample: int, device) -> torch.Generator:
    import torch

    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + sample) % 2**63)
    return g


# ---------------------------------------------------------------------------- beam search

def _beam_search(model, eot: int, seqs, num_beams: int, max_new_tokens: int,
                 length_penalty: float = 1.0) -> list[list[tuple[list[int], str, float]]]:
    """transformers' beam search (early_stopping=False), batched over prompts.

    -> per prompt, num_beams (tokens, finish_reason, score), best first.
    """
    import torch
    import torch.nn.functional as F

    P, nb = len(seqs), num_beams
    rows = _Rows(model, [s for s in seqs for _ in range(nb)], max_new_tokens, fill=eot)
    dev = rows.ids.device
    logits = rows.prefill()
    V = logits.size(-1)
    neg = -1.0e9
    running = torch.zeros(P, nb, device=dev)
    running[:, 1:] = neg                        # only beam 0 expands on the first step
    running_seq = torch.full((P, nb, max_new_tokens), eot, dtype=torch.long, device=dev)
    fin_score = torch.full((P, nb), neg, device=dev)
    fin_seq = running_seq.clone()
    fin_len = torch.zeros(P, nb, dtype=torch.long, device=dev)
    fin_done = torch.zeros(P, nb, dtype=torch.bool, device=dev)
    improvable = torch.ones(P, dtype=torch.bool, device=dev)
    top_nb = torch.arange(2 * nb, device=dev) < nb  # only the best nb candidates may finish
    arange_p = torch.arange(P, device=dev)[:, None]

    for step in range(max_new_tokens):
        logp = F.log_softmax(logits.float(), dim=-1).view(P, nb, V) + running[:, :, None]
        cand_score, cand = torch.topk(logp.view(P, nb * V), 2 * nb, dim=-1)
        cand_beam, cand_tok = cand // V, cand % V
        cand_seq = running_seq[arange_p, cand_beam]          # [P, 2nb, max_new]
        cand_seq[:, :, step] = cand_tok
        hits = (cand_tok == eot) | (step + 1 >= max_new_tokens)

        # Finished candidates compete with earlier finished ones for the nb slots.
        score = cand_score / ((step + 1) ** length_penalty)
        score = score + (~improvable[:, None]).float() * neg + (~(hits & top_nb)).float() * neg
        merged = torch.cat([fin_score, score], 1)
        best = torch.topk(merged, nb, dim=-1).indices
        fin_score = merged.gather(1, best)
        fin_done = torch.cat([fin_done, hits & top_nb], 1).gather(1, best)
        fin_seq = torch.cat([fin_seq, cand_seq], 1)[arange_p, best]
        # an eot ends the sequence without being part of it; a length stop keeps every token
        cand_len = torch.where(cand_tok == eot, step, step + 1).expand(P, 2 * nb)
        fin_len = torch.cat([fin_len, cand_len], 1).gather(1, best)

        # The best nb candidates that did not finish go on.
        go = torch.topk(cand_score + hits.float() * neg, nb, dim=-1).indices
        running = (cand_score + hits.float() * neg).gather(1, go)
        running_seq = cand_seq[arange_p, go]
        src_beam = cand_beam.gather(1, go)

        # transformers' stopping heuristic: stop once no running beam can beat the worst finished one.
        best_running = running[:, :1] / ((step + 1) ** length_penalty)
        worst = torch.where(fin_done, fin_score.min(1, keepdim=True).values, torch.tensor(neg, device=dev))
        improvable &= (best_running > worst).any(1)
        if not bool(improvable.any()) or bool(hits.all()):  # hits.all(): max_new_tokens reached
            break
        index = (arange_p * nb + src_beam).view(-1)
        if not torch.equal(index, torch.arange(P * nb, device=dev)):
            rows.reorder(index)
        logits = rows.step(running_seq[:, :, step].reshape(-1))

    out = []
    for p in range(P):
        beams = []
        for j in range(nb):
            n = int(fin_len[p, j])
            toks = fin_seq[p, j, :n].tolist()
            reason = "eot" if n < max_new_tokens and fin_seq[p, j, n] == eot and bool(fin_done[p, j]) else "length"
            beams.append((toks, reason, float(fin_score[p, j])))
        out.append(beams)
    return out


# ---------------------------------------------------------------------------- helpers

def _chunks(seqs: list[list[int]], per_chunk: int, same_length: bool) -> list[list[int]]:
    """Prompt indices in batches, similar lengths together (less padding)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    chunks: list[list[int]] = []
    for i in order:
        if chunks and len(chunks[-1]) < per_chunk and (not same_length or len(seqs[chunks[-1][0]]) == len(seqs[i])):
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _completion(tokenizer: Tokenizer, tokens: list[int], reason: str, score: float | None = None) -> Completion:
    return Completion(text=tokenizer.decode(tokens), tokens=tokens, finish_reason=reason, score=score)


def _streamer(on_text: TextCallback, tokenizer: Tokenizer, rows: list[tuple[int, int]]):
    """stream(row, token) for the decoders: new text per (prompt, sample) through `on_text`."""
    detoks = [_Detokenizer(tokenizer) for _ in rows]

    def stream(r: int, token: int) -> None:
        piece = detoks[r].push(token)
        if piece:
            on_text(rows[r][0], rows[r][1], piece)

    return stream


class _Detokenizer:
    """Text of a growing token list, piece by piece, never splitting a multi-byte character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return ""
        piece, self.sent = text[self.sent:], len(text)
        return piece
