"""Tokenizers: our byte-level BPE, or the paper's GPT-Neo BPE kept to its most frequent tokens.

On disk a tokenizer is two files in a data, model or run directory:
  tokenizer.json       - a Hugging Face `tokenizers` file (loads in tokenizers and transformers)
  tokenizer_meta.json  - what tokenizer.json alone cannot say: kind, end-of-text id,
                         the model-side vocab size and, for a truncated GPT-Neo vocab, the unknown id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer

from .errors import UserError

EOT = "<|endoftext|>"
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
    def load(cls, directory: str | Path) -> "Tokenizer":
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
            meta = json.loads(meta_path.read_text())
        else:  # a bare tokenizer.json (e.g. from a transformers directory): infer the facts
            eot = tk.token_to_id(EOT)
            if eot is None:
                raise UserError(f"{path}: has no {EOT} token and no {META_FILE}")
            meta = {"kind": "external", "vocab_size": tk.get_vocab_size(), "eot_id": eot}
        return cls(tk, meta)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tk.save(str(directory / TOKENIZER_FILE))
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

    # -- coding ---------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._clip(self.tk.encode(text).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._clip(e.ids) for e in self.tk.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=False)

    def _clip(self, ids: list[int]) -> list[int]:
        if self.unk_id is None:
            return ids
        v, unk = self.vocab_size, self.unk_id
        return [i if i < v else unk for i in ids]


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, show_progress: bool = False) -> Tokenizer:
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
