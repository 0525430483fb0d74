"""Build the vocabulary that `tinystories synth` draws its words from (paper section 2: ~1,500 basic words
a 3-4 year old knows, split into verbs, nouns and adjectives).

Sources, all named:
  - the words of the shared TinyStories training files (TinyStories-train-head.txt,
    TinyStoriesV2-GPT4-train-head.txt, tinystories-sample-3000.json): the stories were written to use
    the paper's vocabulary, so a word many stories use is likely one of it;
  - `lemminflect`'s lexicon (the project's word matcher): lemma and the parts of speech a spelling can have;
  - `wordfreq` (PyPI, Zipf frequencies of English): drops words that are rare in English at large
    (names, made-up words, misspellings), since a 3-year-old knows common words.

A spelling the lexicon files under several parts of speech ("play", "dog") gets the part its
occurrences vote for: a form only one part has ("played" is a verb) is one vote, and so is the word
before it ("to", "will", "can" before a verb; "a", "the", "his" before a noun; "very", "so" before
an adjective).

    pip install wordfreq
    python scripts/build_synth_vocab.py [--size 1500] [--out src/tinystories/resources/synth/vocabulary.txt]

The held-out TinyStories-subset-valid.txt is not read here; `--compare` reports how much of its
story vocabulary the list covers (the README's numbers).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tinystories.data.instruct.words import _STOP, lexicon_lemmas, pos_of, word_tokens
from tinystories.data.sources import iter_stories

SHARED = REPO.parent / "shared" / "data" / "tinystories"
SOURCES = ["TinyStories-train-head.txt", "TinyStoriesV2-GPT4-train-head.txt", "tinystories-sample-3000.json"]
# Spellings the lexicon files as adjectives that a story cannot be asked to "use" as one.
_ODD = {"two", "second", "often", "less", "inside", "front", "top", "worth", "near", "entire", "everyday"}
TAGS = {"VERB": "verb", "NOUN": "noun", "ADJ": "adjective"}

_VERB_BEFORE = {"to", "will", "can", "could", "would", "should", "did", "didnt", "dont", "doesnt", "cant", "wont",
                "must", "lets", "not"}
_NOUN_BEFORE = {"a", "an", "the", "my", "his", "her", "their", "your", "our", "its", "this", "that", "these",
                "those", "some"}
_ADJ_BEFORE = {"very", "so", "too", "really", "more", "most", "was", "were", "is", "are", "felt", "feel", "looked",
               "seemed"}


def _entries(tok: str) -> dict[str, tuple[str, ...]]:
    """The lexicon's verb/noun/adjective entries of a lowercase spelling; none for a spelling the lexicon
    also files as an adverb, unless it is a graded adjective: "about", "away" make poor instructions."""
    if not tok.islower():
        return {}
    got = lexicon_lemmas(tok.lower())
    if "ADV" in got and not _graded(got.get("ADJ", ())):
        return {}                   # "about", "away"; but "cold", "fast" (colder, faster) stay
    return {p: ls for p, ls in got.items() if p in TAGS}


def _graded(adj_lemmas) -> bool:
    """Whether an adjective has a comparative in the lexicon (cold: colder)."""
    from lemminflect import getAllInflections

    return any("JJR" in getAllInflections(l, "ADJ") for l in adj_lemmas)


def _vote(entries: dict, prev: str, nxt: dict) -> str | None:
    """The part of speech one occurrence votes for, or None when it gives no evidence."""
    if len(entries) == 1:
        return next(iter(entries))
    if prev in _VERB_BEFORE and "VERB" in entries:
        return "VERB"
    if prev in _ADJ_BEFORE and "ADJ" in entries:
        return "ADJ"
    if prev in _NOUN_BEFORE:
        if "ADJ" in entries and "NOUN" in nxt:     # "an ancient tree": the word before the noun
            return "ADJ"
        if "NOUN" in entries and "NOUN" not in nxt:
            return "NOUN"
    return None


def votes(stories) -> tuple[dict[str, Counter], Counter]:
    """lemma -> Counter of parts of speech voted for, and lemma -> number of stories using it."""
    vote: dict[str, Counter] = defaultdict(Counter)
    df: Counter = Counter()
    for story in stories:
        toks = word_tokens(story)
        ents = [_entries(t) for t in toks]
        seen = set()
        for i, (tok, entries) in enumerate(zip(toks, ents)):
            w = tok.lower()
            if not entries or len(w) < 3 or w in _STOP:
                continue
            lemmas = {l.lower() for ls in entries.values() for l in ls}
            if len(lemmas) != 1 or next(iter(lemmas)) in _STOP:
                continue
            (lem,) = lemmas
            seen.add(lem)
            prev = toks[i - 1].lower().replace("'", "") if i else ""
            pos = _vote(entries, prev, ents[i + 1] if i + 1 < len(toks) else {})
            if pos:
                vote[lem][pos] += 1
        df.update(seen)
    return vote, df


def build(size: int, min_zipf: float, min_df: int) -> list[tuple[str, str, int]]:
    from wordfreq import zipf_frequency

    stories = (s for name in SOURCES for s in iter_stories(SHARED / name))
    vote, df = votes(stories)
    rows = []
    for lem, n in df.items():
        if n < min_df or lem in _ODD or not vote[lem] or not lem.isalpha() or zipf_frequency(lem, "en") < min_zipf:
            continue
        pos, top = vote[lem].most_common(1)[0]
        if top < 2:   # one vote is no evidence
            continue
        rows.append((lem, TAGS[pos], n))
    # Most-used first: a word many stories use is one the paper's vocabulary likely held.
    rows.sort(key=lambda r: (-r[2], r[0]))
    return rows[:size]


def compare(words: set[str]) -> None:
    """How much of the held-out valid file's story vocabulary the list covers."""
    types: Counter = Counter()
    for story in iter_stories(SHARED / "TinyStories-subset-valid.txt"):
        for tok in word_tokens(story):
            got = pos_of(tok)
            if got:
                types[got[1]] += 1
    covered = sum(c for w, c in types.items() if w in words)
    print(f"valid file: {len(types)} content lemmas, {sum(types.values())} uses; the list covers "
          f"{sum(w in words for w in types)} lemmas ({sum(w in words for w in types) / len(types):.1%}) and "
          f"{covered / sum(types.values()):.1%} of uses")
    paper = ["decorate", "thunder", "ancient", "disagree", "network", "beautiful", "perform", "cold", "come", "road", "sad"]
    print(f"the paper's example words in the list: {sum(w in words for w in paper)}/{len(paper)} "
          f"(missing: {', '.join(w for w in paper if w not in words) or 'none'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1500)
    ap.add_argument("--min-zipf", type=float, default=3.0, help="wordfreq Zipf frequency floor (default 3.0)")
    ap.add_argument("--min-df", type=int, default=3, help="stories a word must occur in (default 3)")
    ap.add_argument("--out", default=str(REPO / "src/tinystories/resources/synth/vocabulary.txt"))
    ap.add_argument("--compare", action="store_true", help="report coverage of the held-out valid file")
    args = ap.parse_args()
    rows = build(args.size, args.min_zipf, args.min_df)
    counts = Counter(tag for _, tag, _ in rows)
    header = [
        "# The vocabulary of `tinystories synth`: one word and its part of speech (verb, noun, adjective) a line.",
        "# Built by scripts/build_synth_vocab.py from the words of the shared TinyStories training files,",
        "# lemminflect's parts of speech and wordfreq's English frequencies (see the script).",
        (f"# {len(rows)} words: {counts['verb']} verbs, {counts['noun']} nouns, {counts['adjective']} adjectives;"
         f" settings --size {args.size} --min-zipf {args.min_zipf} --min-df {args.min_df}."),
    ]
    body = [f"{w} {tag}" for tag in ("verb", "noun", "adjective") for w, t, _ in sorted(rows) if t == tag]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(header + body) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} words to {args.out}: {dict(counts)}")
    if args.compare:
        compare({w for w, _, _ in rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
