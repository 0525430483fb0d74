"""Compare a few generated texts with a whole training corpus in one streamed pass (paper section 4.4.1).

Two questions are asked of every training story, for ~100 generated texts at once:
  * which of the generated k-grams (k = 2..6) occur in it, and how often (for the share of generated
    k-grams that the corpus contains, and their frequency g_r);
  * how many of each generated text's bigrams it contains (for the closest story by Rouge-2 precision).

The index is built over the generated side, which is small: hashed k-grams in sorted arrays, and hashed
"numbered bigrams" with postings lists of the texts that hold them. The corpus is streamed in chunks,
each chunk's n-grams hashed with numpy and looked up with one `searchsorted`; bigram hits are expanded
through the postings into (story, text) pairs and counted with `bincount`. Time is linear in the corpus
and memory is O(generated text + one chunk), so the 2.1M-story corpus works the same as a test file;
there is no loop over (story, text) pairs.

Numbered bigrams make counts exact: the m-th occurrence of a bigram in a text is its own feature, so the
number of shared features is sum over bigrams of min(count in text, count in story), the clipped overlap
of Rouge-2. Words are hashed with Python's `hash` (stable within a process) and n-grams with a 64-bit mix;
a collision is about as likely as a 2^-64 event per pair, and the winner's score is recomputed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from .rouge import rouge_precision, tokenize

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection on uint64 that spreads every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def word_ids(words: list[str]) -> np.ndarray:
    return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)


def kgram_hashes(ids: np.ndarray, doc: np.ndarray, kmax: int) -> dict[int, np.ndarray]:
    """{k: hashes of all k-grams (k = 2..kmax) that do not cross a document boundary}.

    `ids` are the words of several documents laid end to end, `doc` says which document each belongs to.
    """
    out = {}
    with np.errstate(over="ignore"):
        h = _mix(ids ^ _GOLD)
        for k in range(2, kmax + 1):
            n = len(ids) - k + 1
            if n <= 0:
                out[k] = np.empty(0, np.uint64)
                continue
            h = _mix((h[:n] * _GOLD) ^ ids[k - 1:])
            out[k] = h[doc[:n] == doc[k - 1:]]
    return out


def numbered(h: np.ndarray, doc: np.ndarray) -> np.ndarray:
    """Turn each document's bigram hashes into features "m-th occurrence of this bigram" (m = 0, 1, ...)."""
    if len(h) == 0:
        return h
    with np.errstate(over="ignore"):
        pair = _mix(h ^ (doc.astype(np.uint64) * _GOLD))     # one sort key for (document, bigram)
        order = np.argsort(pair, kind="stable")             # stable: occurrences keep text order
        ps = pair[order]
        new_run = np.ones(len(ps), bool)
        new_run[1:] = ps[1:] != ps[:-1]
        starts = np.maximum.accumulate(np.where(new_run, np.arange(len(ps)), 0))
        occ = (np.arange(len(ps)) - starts).astype(np.uint64)
        feats = np.empty_like(h)
        feats[order] = _mix(h[order] ^ (occ * _M2))
    return feats


class _Lookup:
    """Membership of hashes in a sorted array: a bitmap on the low bits rejects most misses before the
    binary search (the corpus has far more k-grams than the generated texts)."""

    BITS = 22

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        self.mask = np.uint64((1 << self.BITS) - 1)
        self.bitmap = np.zeros(1 << self.BITS, bool)
        self.bitmap[(keys & self.mask).astype(np.int64)] = True

    def find(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in h that are keys, their index in keys)."""
        if len(self.keys) == 0 or len(h) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        cand = np.flatnonzero(self.bitmap[(h & self.mask).astype(np.int64)])
        pos = np.minimum(np.searchsorted(self.keys, h[cand]), len(self.keys) - 1)
        hit = self.keys[pos] == h[cand]
        return cand[hit], pos[hit]


def _doc_arrays(texts: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    words = [w for t in texts for w in t]
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), [len(t) for t in texts])
    return word_ids(words), doc


@dataclass
class Closest:
    score: float = 0.0           # Rouge-2 precision of the generated text against this story
    overlap: int = -1            # clipped bigram overlap (the scan's ranking key)
    index: int = -1              # position of the story in the corpus stream
    text: str = ""


@dataclass
class CorpusScan:
    """Index `generated` texts; `scan(corpus)` fills k-gram counts and each text's closest story."""

    generated: list[str]
    kmax: int = 6
    chunk: int = 2048
    words: list[list[str]] = field(init=False)
    kgrams: dict[int, np.ndarray] = field(init=False)        # sorted distinct generated k-gram hashes
    counts: dict[int, np.ndarray] = field(init=False)        # their occurrences in the corpus
    totals: dict[int, int] = field(init=False)               # all k-grams in the corpus
    closest: list[Closest] = field(init=False)
    stories: int = field(init=False, default=0)

    def __post_init__(self):
        self.words = [tokenize(t) for t in self.generated]
        ids, doc = _doc_arrays(self.words)
        hashes = kgram_hashes(ids, doc, self.kmax)
        self.kgrams = {k: np.unique(h) for k, h in hashes.items()}
        self.counts = {k: np.zeros(len(v), np.int64) for k, v in self.kgrams.items()}
        self.totals = {k: 0 for k in self.kgrams}
        # postings: numbered bigram feature -> the generated texts that hold it
        feats = numbered(hashes[2] if self.kmax >= 2 else np.empty(0, np.uint64), self._bigram_doc(doc))
        owner = self._bigram_doc(doc)
        order = np.argsort(feats, kind="stable")
        feats, owner = feats[order], owner[order]
        self.features, first = np.unique(feats, return_index=True)
        self.lookup = {k: _Lookup(v) for k, v in self.kgrams.items()}
        self.feature_lookup = _Lookup(self.features)
        self.offsets = np.append(first, len(feats)).astype(np.int64)
        self.postings = owner
        self.n_bigrams = np.array([max(len(w) - 1, 0) for w in self.words], np.int64)
        self.closest = [Closest() for _ in self.generated]

    def _bigram_doc(self, doc: np.ndarray) -> np.ndarray:
        """The document of each in-document bigram (same order as kgram_hashes' k=2 output)."""
        return doc[:-1][doc[:-1] == doc[1:]] if len(doc) > 1 else np.empty(0, np.int64)

    def scan(self, corpus: Iterable[str], progress=None) -> "CorpusScan":
        """Stream the corpus once. `progress(n)` is called with the number of stories done per chunk."""
        for batch in _chunks(corpus, self.chunk):
            self._scan_chunk(batch)
            self.stories += len(batch)
            if progress is not None:
                progress(len(batch))
        for c, words in zip(self.closest, self.words):  # exact score for the winner
            # no story shares a single bigram: precision 0 against every one (index stays -1)
            c.score = rouge_precision(words, c.text) if c.index >= 0 else 0.0
        return self

    def _scan_chunk(self, batch: list[str]) -> None:
        ids, doc = _doc_arrays([tokenize(s) for s in batch])
        hashes = kgram_hashes(ids, doc, self.kmax)
        for k, h in hashes.items():
            self.totals[k] += len(h)
            _, pos = self.lookup[k].find(h)
            self.counts[k] += np.bincount(pos, minlength=len(self.kgrams[k]))
        if len(self.features) == 0 or len(hashes[2]) == 0:
            return
        # only bigrams the generated texts share can match: number those, then look the features up
        story = self._bigram_doc(doc)
        at, _ = self.lookup[2].find(hashes[2])
        story = story[at]
        idx, pos = self.feature_lookup.find(numbered(hashes[2][at], story))
        story = story[idx]
        # expand each hit through its postings list into (story, generated text) pairs
        lengths = self.offsets[pos + 1] - self.offsets[pos]
        total = int(lengths.sum())
        if total == 0:
            return
        base = np.repeat(self.offsets[pos], lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        texts = self.postings[base + within]
        n_gen = len(self.generated)
        overlap = np.bincount(np.repeat(story, lengths) * n_gen + texts,
                              minlength=len(batch) * n_gen).reshape(len(batch), n_gen)
        best = overlap.argmax(axis=0)
        for i, s in enumerate(best):
            o = int(overlap[s, i])
            if o > self.closest[i].overlap:
                self.closest[i] = Closest(o / max(self.n_bigrams[i], 1), o, self.stories + int(s), batch[s])

    # ------------------------------------------------------------ results
    def kgram_report(self) -> dict:
        """Per k: distinct generated k-grams, the share found in the corpus, and log10 frequencies g_r."""
        out = {}
        for k, counts in self.counts.items():
            total = self.totals[k]
            freq = np.where(counts > 0, np.log10(np.maximum(counts, 1) / max(total, 1)), -10.0)
            out[str(k)] = {"distinct": int(len(counts)), "found": int((counts > 0).sum()),
                           "share_found": float((counts > 0).mean()) if len(counts) else None,
                           "corpus_kgrams": int(total), "log10_freq": [round(float(x), 3) for x in freq]}
        return out


def _chunks(it: Iterable[str], size: int) -> Iterator[list[str]]:
    batch = []
    for s in it:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
