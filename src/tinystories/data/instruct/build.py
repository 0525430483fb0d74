"""Building TinyStories-Instruct records from stories, and summaries from an LLM."""

from __future__ import annotations

import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from ...errors import UserError
from .features import detect_features
from .records import EOT, FIELDS, InstructRecord, format_record
from .words import QUOTES, content_words, split_sentences, word_tokens

# ---------------------------------------------------------------- building records

@dataclass
class BuildConfig:
    """How `build_record` picks instructions. Each available field is kept with probability `p_field`
    (redrawn when none is kept): a uniform random non-empty subset when p_field = 0.5."""

    seed: int = 0
    p_field: float = 0.5
    min_sentence_words: int = 3
    shuffle_order: bool = True  # the dataset's field order varies; so does ours
    # lemma -> number of stories it occurs in (`word_document_frequencies`). Given, each word of a story
    # is drawn with weight 1/df, so that over the corpus every word is asked for about equally often, as
    # in the dataset, whose words were drawn uniformly from a fixed vocabulary before the story was
    # written. None: uniform over the story's words, which mostly asks for words every story has
    # (happy, girl, play) and so teaches a model nothing about following the Words line.
    word_df: Mapping[str, int] | None = None


def word_document_frequencies(stories: Iterable[str]) -> Counter:
    """lemma -> the number of `stories` it occurs in, over the words `content_words` can pick."""
    df: Counter = Counter()
    for story in stories:
        df.update({w for words in content_words(story).values() for w in words})
    return df


def _pick_word(words: list[str], rng: random.Random, df: Mapping[str, int] | None) -> str:
    if df is None:
        return rng.choice(words)
    return rng.choices(words, weights=[1.0 / max(1, df.get(w, 1)) for w in words])[0]


def candidate_sentences(story: str, min_words: int = 3) -> list[str]:
    """Sentences the `Random sentence:` can be: not the first, at least `min_words` words, and
    with balanced double quotes (not half of a quotation cut at its inner full stop)."""
    sents = split_sentences(story)[1:]
    return [s for s in sents
            if len(word_tokens(s)) >= min_words and s.translate(QUOTES).count('"') % 2 == 0]


def build_record(story: str, rng: random.Random, cfg: BuildConfig = BuildConfig(),
                 summarize: Callable[[str], str] | None = None) -> InstructRecord:
    """Instructions for one plain story: Words (a verb, a noun and an adjective from the story, as
    lemmas), Random sentence (any but the first), detected Features, and a Summary if `summarize`
    is given; then a random non-empty subset of those that exist. The summarizer is called only
    when the summary was drawn."""
    story = story.strip()
    avail: dict[str, object] = {}
    cw = content_words(story)
    if all(cw.values()):
        avail["words"] = [_pick_word(cw[pos], rng, cfg.word_df) for pos in ("VERB", "NOUN", "ADJ")]
    sents = candidate_sentences(story, cfg.min_sentence_words)
    if sents:
        avail["sentence"] = rng.choice(sents)
    feats = detect_features(story)
    if feats:
        avail["features"] = feats
    if summarize is not None:
        avail["summary"] = None  # drawn lazily: a summary costs a request
    keep: list[str] = []
    while avail and not keep:
        keep = [k for k in avail if rng.random() < cfg.p_field]
    order = [f for f in FIELDS]
    if cfg.shuffle_order:
        rng.shuffle(order)
    rec = InstructRecord(story=story, order=tuple(order))
    for k in keep:
        value = avail[k] if k != "summary" else " ".join(summarize(story).split())
        setattr(rec, k, value or ([] if k in ("words", "features") else None))
    return rec


def build_records(stories: Iterable[str], cfg: BuildConfig = BuildConfig(),
                  summarize: Callable[[str], str] | None = None) -> Iterator[InstructRecord]:
    """`build_record` over a stream of stories, with one seeded generator (same seed, same records)."""
    rng = random.Random(cfg.seed)
    for story in stories:
        if story.strip():
            yield build_record(story, rng, cfg, summarize)


def write_records(records: Iterable[InstructRecord], out: str | Path, *, force: bool = False,
                  progress_desc: str | None = None, total: int | None = None,
                  inputs: Iterable[str | Path] = ()) -> int:
    """Write records in the official txt format (each record, then a `<|endoftext|>` line), streamed
    into a temporary sibling that replaces `out` only when all is written. Returns the count.
    `inputs` (the sources the records come from) must not be `out`, contain it or lie under it."""
    from ...runtime.console import progress
    from ...runtime.files import check_apart, fsync_dir

    check_apart(out, inputs)  # with --force, out == source would replace the stories being read
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; pass --force to replace it")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            it = records if progress_desc is None else progress(records, desc=progress_desc, unit="story",
                                                                total=total)
            for rec in it:
                f.write(format_record(rec) + f"\n{EOT}\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return n


# ---------------------------------------------------------------- summaries

SUMMARY_PROMPT = ("Summarize the following children's story in one or two short, simple sentences "
                  "(at most 40 words). Reply with the summary only.\n\nStory:\n{story}")


def make_summarizer(url: str, model: str, *, cache: str | Path | None = None, **client_kw) -> Callable[[str], str]:
    """A `summarize(story) -> str` that asks an OpenAI-compatible server (the judge's client, `llm.ChatClient`).

    Summaries are cached on disk by (model, prompt, story), in `cache` or by default
    <cache dir>/summaries.jsonl (cache="" turns that off): a build that stops half way pays for
    nothing twice when it is rerun.
    """
    from ...llm.cache import JsonlCache, default_cache_dir, key
    from ...llm.client import ChatClient

    client = ChatClient(url, model, **{"what": "summarizer", **client_kw})
    store = JsonlCache(None if cache == "" else Path(cache or default_cache_dir() / "summaries.jsonl"))

    def summarize(story: str) -> str:
        prompt = SUMMARY_PROMPT.format(story=story.strip())
        k = key("summary", model, prompt)
        text = store.get(k)
        if text is None:
            text = " ".join(client.complete(prompt, temperature=0.0).split())
            if not text:
                raise UserError(f"--summarizer-url {url}: the summarizer returned an empty summary")
            store.put(k, text)
        return text

    return summarize


