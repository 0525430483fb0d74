"""Fuzzed readers (issue 21): the story sources and the Instruct record parser, with `hypothesis`.

Whatever bytes a file holds, a reader either yields normalized stories or raises UserError (one
line, naming the file); nothing else escapes. For well-formed input, the streamed readers give the
same stories whatever the read size, so chunk boundaries (inside a UTF-8 character, inside an
<|endoftext|>, inside a JSON string) cannot change the data. The Instruct parser reads back what
`format_record` writes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinystories.data import sources
from tinystories.data.instruct.records import (
    FEATURES,
    InstructRecord,
    format_record,
    parse_record,
)
from tinystories.data.sources import EOT, iter_stories, normalize
from tinystories.errors import UserError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text with the characters that matter: separators, whitespace kinds, multi-byte UTF-8, the BOM.
_ALPHABET = st.sampled_from(list("ab \t\n\r.,\"'") + ["é", "字", "😀", "\ufeff", "<|endoftext|>", "\u00a0"])
texts = st.lists(_ALPHABET, max_size=80).map("".join)
chunks = st.integers(min_value=1, max_value=16)


def _read(suffix: str, data: bytes, chunk: int = sources.CHUNK) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"s{suffix}"
        path.write_bytes(data)
        old = sources.CHUNK
        sources.CHUNK = chunk  # _text_chunks reads the module's CHUNK at call time
        try:
            return list(iter_stories(path))
        finally:
            sources.CHUNK = old


def _expected(docs: list[str]) -> list[str]:
    out = []
    for doc in docs:
        for piece in doc.split(EOT):
            s = normalize(piece)
            if s:
                out.append(s)
    return out


def _check_stories(stories: list[str]) -> None:
    for s in stories:
        assert s and s == normalize(s) and EOT not in s


@FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".json", ".jsonl"]), chunk=chunks)
def test_any_bytes_are_stories_or_one_user_error(data, suffix, chunk):
    try:
        stories = _read(suffix, data, chunk)
    except UserError as e:
        assert "\n" not in str(e) and "s" + suffix in str(e)
        return
    _check_stories(stories)


@FAST
@given(text=texts, chunk=chunks)
def test_txt_reader_is_chunk_independent(text, chunk):
    data = text.encode("utf-8")
    try:
        whole = _read(".txt", data)
    except UserError:
        with pytest.raises(UserError):
            _read(".txt", data, chunk)
        return
    assert _read(".txt", data, chunk) == whole == _expected([text.removeprefix("\ufeff")])


@FAST
@given(docs=st.lists(texts, max_size=6), chunk=chunks, wrap=st.sampled_from(["list", "texts", "objects"]))
def test_json_reader_matches_json_loads(docs, chunk, wrap):
    obj = {"list": docs, "texts": {"meta": [1, {"x": "]"}], "texts": docs}, "objects": [{"text": d} for d in docs]}[wrap]
    data = json.dumps(obj, ensure_ascii=bool(chunk % 2)).encode("utf-8")
    expected = _expected(docs)
    if not expected:
        with pytest.raises(UserError):
            _read(".json", data, chunk)
        return
    assert _read(".json", data, chunk) == expected


@FAST
@given(docs=st.lists(texts, max_size=6), chunk=chunks, objects=st.booleans())
def test_jsonl_reader_matches_json_loads(docs, chunk, objects):
    data = "".join(json.dumps({"text": d} if objects else d) + "\n" for d in docs).encode("utf-8")
    expected = _expected(docs)
    if not expected:
        with pytest.raises(UserError):
            _read(".jsonl", data, chunk)
        return
    assert _read(".jsonl", data, chunk) == expected


@FAST
@given(docs=st.lists(texts, min_size=1, max_size=6), cut=st.integers(min_value=1, max_value=40), chunk=chunks)
def test_truncated_json_is_one_user_error(docs, cut, chunk):
    data = json.dumps(docs).encode("utf-8")
    data = data[: max(1, len(data) - cut)]
    with pytest.raises(UserError):
        _read(".json", data, chunk)


# ---------------------------------------------------------------- the Instruct record parser

@FAST
@given(text=st.text(max_size=200))
def test_any_text_is_a_record_or_one_user_error(text):
    for require_story in (True, False):
        try:
            rec = parse_record(text, require_story=require_story, where="rec")
        except UserError as e:
            assert str(e).startswith("rec")
            continue
        assert isinstance(rec, InstructRecord)
        if require_story:
            assert rec.story


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_line = st.text(alphabet="abcdefghij ,.!?'\"", min_size=1, max_size=40).map(str.strip).filter(
    lambda s: s and s.strip(",.") == s.strip(",.").strip() and not s.endswith((",", ".")) and "," not in s)
_sentence = st.text(alphabet="abcdefghij .!?'\"", min_size=1, max_size=40).map(str.strip).filter(bool)


@FAST
@given(words=st.lists(_word, max_size=4), sentence=st.none() | _sentence,
       features=st.lists(st.sampled_from(FEATURES), max_size=3, unique=True), summary=st.none() | _sentence,
       story=_sentence, order=st.permutations(["features", "words", "summary", "sentence"]))
def test_format_then_parse_round_trips(words, sentence, features, summary, story, order):
    rec = InstructRecord(story=story, words=words, sentence=sentence, features=features, summary=summary,
                         order=tuple(order))
    back = parse_record(format_record(rec))
    assert back.story == story.strip()
    assert back.words == words
    assert back.features == features
    assert back.sentence == (sentence or None)
    assert back.summary == (summary or None)
    assert back.present() == rec.present()
