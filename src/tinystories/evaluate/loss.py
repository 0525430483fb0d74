"""`evaluate loss`: nats per token, perplexity and bits per byte of a model on any text.

The data is a DATA_DIR from `prepare` (its val.bin, already tokenized with the same tokenizer) or any
source `prepare` accepts (.txt, .json, .jsonl, .parquet, a hub dataset), tokenized on the fly with the
model's tokenizer, each story followed by the end-of-text token, exactly as `prepare` lays it out.
The stream is scored in chunks by `metrics.stream_loss`, one window grid over the whole stream, so
the numbers equal what training's validation reports on the same tokens; memory stays flat.
Bits per byte divide by the UTF-8 bytes of the stories, so models with different tokenizers compare.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError
from ..runtime.console import progress
from .common import check_model_dir, model_fingerprint, report_dir, write_report


@dataclass
class LossConfig:
    """Cross-entropy of one model on a text source or a DATA_DIR split."""
    model_dir: str
    """run or model directory"""
    data: str
    """any source `prepare` accepts (.txt, .json, .jsonl, .parquet, hub name) or a DATA_DIR"""
    split: str = "val"
    """split of a DATA_DIR to score"""
    batch_size: int = 8
    """sequences per forward pass"""
    max_tokens: int | None = None
    """score only the first N tokens"""
    out: str | None = None
    """report directory (default MODEL_DIR/eval)"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps"""


def is_data_dir(path: str | Path) -> bool:
    """A folder with meta.json is a DATA_DIR from `prepare`."""
    p = Path(path)
    return p.is_dir() and (p / "meta.json").is_file()


def evaluate_loss(cfg: LossConfig) -> dict:
    """Score the model on cfg.data; write loss.json/.md into the report dir and return the report."""
    model_dir = check_model_dir(cfg.model_dir)
    if cfg.max_tokens is not None and cfg.max_tokens < 1:
        raise UserError(f"--max-tokens must be positive, got {cfg.max_tokens}")
    if cfg.batch_size < 1:  # 0 would score nothing forever (a negative one hung the reader)
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    import torch  # after the checks: a bad option fails in a moment

    from .metrics import StreamLoss, stream_loss
    from ..model.modeldir import load_model, model_config
    from ..runtime.device import resolve_device

    model, tok = load_model(model_dir, device=resolve_device(cfg.device))
    context = model_config(model).context
    if is_data_dir(cfg.data):      # other folders are sources (a local Hugging Face dataset)
        chunks, total_bytes, total_tokens = _data_dir_stream(Path(cfg.data), cfg.split, model_dir)
    else:
        chunks, total_bytes, total_tokens = _source_stream(cfg.data, tok), None, None

    # Score in pieces of `span` windows; consecutive pieces share one token (the last target is the
    # next piece's first input), so the window grid is the same as scoring the whole stream at once.
    span = context * cfg.batch_size * 16
    total = StreamLoss(0.0, 0)
    seen_tokens, seen_bytes = 0, 0
    limit = cfg.max_tokens
    buf = np.empty(0, np.int64)
    known = [x for x in (total_tokens - 1 if total_tokens else None, limit) if x is not None]
    bar_total = min(known) if known else None
    with progress(total=bar_total, desc="scoring", unit="tok", unit_scale=True) as bar:
        def score(piece: np.ndarray) -> None:
            left = None if limit is None else limit - total.tokens
            r = stream_loss(model, piece, context, cfg.batch_size, max_tokens=left, progress=bar.update)
            total.nats += r.nats
            total.tokens += r.tokens

        for ids, nbytes in chunks:
            buf = np.concatenate([buf, ids])
            seen_tokens += len(ids)
            seen_bytes += nbytes
            while len(buf) > span and (limit is None or total.tokens < limit):
                score(buf[:span + 1])
                buf = buf[span:]
            if limit is not None and total.tokens >= limit:
                break
        if len(buf) > 1 and (limit is None or total.tokens < limit):
            score(buf)
    if total.tokens == 0:
        raise UserError(f"--data {cfg.data}: no text to score (fewer than two tokens)")

    # Bytes of what was scored: all of them, or (with --max-tokens) the read bytes scaled to the scored share.
    n_bytes = total_bytes if total_bytes is not None else seen_bytes
    n_tokens = total_tokens if total_tokens is not None else seen_tokens
    fraction = min(1.0, total.tokens / max(n_tokens - 1, 1))
    report = {
        "kind": "loss",
        "model": {"dir": str(model_dir), "weights_sha256": model_fingerprint(model_dir)},
        "data": str(cfg.data) + (f" ({cfg.split}.bin)" if is_data_dir(cfg.data) else ""),
        "tokens_scored": total.tokens, "bytes": n_bytes, "token_fraction": fraction, "context": context,
        "nats_per_token": total.mean, "perplexity": total.perplexity,
        "bits_per_byte": total.bits_per_byte(n_bytes, fraction) if n_bytes else None,
        "tokenizer": tok.kind, "vocab_size": tok.vocab_size,
        "torch": torch.__version__,
    }
    write_report(report_dir(model_dir, cfg.out), "loss", report, markdown(report))
    return report


def _source_stream(source: str, tok, batch: int = 256) -> Iterator[tuple[np.ndarray, int]]:
    """(token ids of a batch of stories each followed by end-of-text, their UTF-8 bytes), streamed."""
    from ..data.sources import iter_stories

    stories: list[str] = []

    def flush():
        ids = []
        for enc in tok.encode_batch(stories):
            ids += enc
            ids.append(tok.eot_id)
        return np.asarray(ids, np.int64), sum(len(s.encode("utf-8")) for s in stories)

    for story in iter_stories(source):
        stories.append(story)
        if len(stories) == batch:
            yield flush()
            stories = []
    if stories:
        yield flush()


def _data_dir_stream(data_dir: Path, split: str, model_dir: Path):
    """Chunks of a prepared split, its byte count and token count (after checking the tokenizers match)."""
    from ..data.prepare import SPLITS, load_data_dir

    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose {' or '.join(SPLITS)}")
    dd = load_data_dir(data_dir)
    if _vocab(data_dir) != _vocab(model_dir):
        raise UserError(f"--data {data_dir} was tokenized with a different tokenizer than {model_dir}; "
                        "pass the text source instead (e.g. the .txt file) to tokenize it with the model's")
    tokens = getattr(dd, split)

    def chunks():
        step = 1 << 20
        for i in range(0, len(tokens), step):
            yield np.asarray(tokens[i:i + step], np.int64), 0

    return chunks(), int(dd.meta["splits"][split]["bytes"]), len(tokens)


def _vocab(directory: Path):
    try:
        tk = json.loads((directory / "tokenizer.json").read_text())
        return tk.get("model", {}).get("vocab"), tk.get("model", {}).get("merges")
    except (OSError, ValueError):
        return None


def markdown(r: dict) -> str:
    bpb = "-" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.4f}"
    return (f"# Loss: {r['model']['dir']}\n\nData: {r['data']}, {r['tokens_scored']:,} tokens scored "
            f"in windows of {r['context']}.\n\n| nats/token | perplexity | bits/byte |\n|---|---|---|\n"
            f"| {r['nats_per_token']:.4f} | {r['perplexity']:.3f} | {bpb} |\n")
