"""Rouge-N between two texts (paper section 4.4.1), written out so that every number can be checked by hand.

Tokenization: lowercase, then every maximal run of ASCII letters and digits is a word; everything else
(punctuation, apostrophes, quotes, non-ASCII letters) separates words. "Don't stop!" -> [don, t, stop].
This is the tokenization of the `rouge-score` package without stemming, so the numbers agree with it.

R_{n,p}(T1, T2), the precision of T1 against T2, is the share of T1's n-grams that also occur in T2,
counting repeats at most as often as they occur in T2 ("clipped"): overlap / |G_n(T1)|.
The F-measure is the harmonic mean of R_{n,p}(T1, T2) and R_{n,p}(T2, T1).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class Rouge:
    precision: float   # R_{n,p}(T1, T2): T1's n-grams found in T2
    recall: float      # R_{n,p}(T2, T1)
    fmeasure: float


def rouge_n(t1: str | list[str], t2: str | list[str], n: int = 2) -> Rouge:
    """Rouge-N of T1 (the candidate) against T2 (the reference). Texts or token lists."""
    g1 = ngrams(tokenize(t1) if isinstance(t1, str) else t1, n)
    g2 = ngrams(tokenize(t2) if isinstance(t2, str) else t2, n)
    overlap = sum((g1 & g2).values())
    p = overlap / sum(g1.values()) if g1 else 0.0
    r = overlap / sum(g2.values()) if g2 else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return Rouge(p, r, f)


def rouge_precision(t1: str | list[str], t2: str | list[str], n: int = 2) -> float:
    return rouge_n(t1, t2, n).precision


def rouge_f(t1: str | list[str], t2: str | list[str], n: int = 2) -> float:
    return rouge_n(t1, t2, n).fmeasure
