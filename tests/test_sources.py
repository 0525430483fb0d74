"""Reading stories: every SOURCE format, normalization, Instruct records, streaming JSON."""

from __future__ import annotations

import json

import pytest

from conftest import TRAIN_JSON, TRAIN_TXT, VALID_TXT
from tinystories.data import sources
from tinystories.errors import UserError
from tinystories.data.sources import iter_stories, normalize, regroup_rows, resolve_source

INSTRUCT = (
    "Features: Dialogue, Twist\n"
    "Words: disagree, network, beautiful\n"
    "Summary: Lily and Timmy build a sandcastle together.\n"
    "Random sentence: One day, she went to the park and saw a beautiful butterfly.\n"
    "Story: Once upon a time, there was a little girl named Lily.\n"
    "She said, “Let’s play!”"
)


def test_normalize_whitespace_and_keeps_unicode():
    raw = "  Once upon a time,  there was a cat. \r\nShe said, “Hi!”\t It’s fun.  \r\n\r\n\r\n\n The end.  \n"
    assert normalize(raw) == "Once upon a time, there was a cat.\nShe said, “Hi!” It’s fun.\n\nThe end."
    assert normalize("a\rb") == "a\nb"
    assert normalize(" \n \n") == ""
    assert normalize(INSTRUCT) == INSTRUCT  # already clean: untouched, every line intact


def test_txt_official_format(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("\ufeffFirst story.  \nLine two.\n<|endoftext|>\n\n<|endoftext|>\n"
                 "Second.<|endoftext|>Third, glued on.\n<|endoftext|>\n" + INSTRUCT + "\n<|endoftext|>\n",
                 encoding="utf-8")
    assert list(iter_stories(f)) == ["First story.\nLine two.", "Second.", "Third, glued on.", INSTRUCT]


def test_txt_shared_file_counts():
    # MANIFEST.md: 2,316 and 3,110 stories.
    assert sum(1 for _ in iter_stories(TRAIN_TXT)) == 2316
    stories = list(iter_stories(VALID_TXT))
    assert len(stories) == 3110
    assert all(s == s.strip() and "  " not in s and "<|endoftext|>" not in s for s in stories)
    assert any("“" in s for s in stories)  # Unicode quotes kept


def test_txt_chunk_boundaries(tmp_path, monkeypatch):
    # Tiny read chunks split separators and multi-byte characters: same stories.
    text = "".join(f"Story {i} says “hé”.\n<|endoftext|>\n" for i in range(50))
    f = tmp_path / "s.txt"
    f.write_text(text, encoding="utf-8")
    want = list(iter_stories(f))
    monkeypatch.setattr(sources, "CHUNK", 5)
    assert list(iter_stories(f)) == want
    assert len(want) == 50 and want[3] == "Story 3 says “hé”."


@pytest.mark.parametrize("shape", ["strings", "texts", "records"])
def test_json_shapes(tmp_path, shape):
    stories = ["One  story.", "Two\r\nlines.", INSTRUCT]
    obj = {"strings": stories,
           "texts": {"name": "x", "meta": {"a": [1, 2, {"b": "]"}]}, "texts": stories, "n": 3},
           "records": [{"text": s, "id": i} for i, s in enumerate(stories)]}[shape]
    f = tmp_path / "s.json"
    f.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    assert list(iter_stories(f)) == ["One story.", "Two\nlines.", INSTRUCT]


def test_json_streaming_matches_json_load(monkeypatch):
    want = [normalize(t) for t in json.loads(TRAIN_JSON.read_text(encoding="utf-8"))["texts"]]
    monkeypatch.setattr(sources, "CHUNK", 997)  # many buffer refills, values cut at every point
    assert list(iter_stories(TRAIN_JSON)) == want
    assert len(want) == 3000


def test_jsonl(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"text": "A  story."}) + "\n\n" + json.dumps("Plain string.") + "\n"
                 + json.dumps({"text": INSTRUCT, "source": "x"}), encoding="utf-8")
    assert list(iter_stories(f)) == ["A story.", "Plain string.", INSTRUCT]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "s.parquet"
    texts = [f"Story number {i}.  It ends.\r\n" for i in range(3000)] + [None, INSTRUCT]
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), f, row_group_size=700)
    got = list(iter_stories(f))
    assert got[:2] == ["Story number 0. It ends.", "Story number 1. It ends."]
    assert len(got) == 3001 and got[-1] == INSTRUCT
    seen = []
    list(iter_stories(f, on_bytes=seen.append))
    assert sum(seen) == f.stat().st_size  # progress accounts for the whole file

    bad = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"story": ["x"]}), bad)
    with pytest.raises(UserError, match="no 'text' column"):
        list(iter_stories(bad))


def test_regroup_line_rows_into_instruct_records():
    # TinyStoriesInstruct's .txt files load from the hub one line per row.
    rows = INSTRUCT.split("\n") + ["<|endoftext|>", "Words: cat", "Story: ", "", "The cat sat.", "<|endoftext|>"]
    docs = [normalize(d) for d in regroup_rows(rows)]  # raw documents: iter_stories normalizes them
    assert docs == [INSTRUCT, "Words: cat\nStory:\n\nThe cat sat.", ""]
    # Document-per-row datasets stay as they are.
    docs = [f"Story {i}.\nSecond line." for i in range(10)]
    assert list(regroup_rows(docs)) == docs


def test_resolve_source_kinds(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert resolve_source(tmp_path / "a.txt").kind == "txt"
    assert resolve_source(tmp_path).kind == "hub"  # a local dataset folder goes through `datasets`
    s = resolve_source(f"{tmp_path}:validation")
    assert (s.kind, s.split, s.path) == ("hub", "validation", tmp_path)
    s = resolve_source("roneneldan/TinyStories:train[:1000]")
    assert (s.kind, s.name, s.split) == ("hub", "roneneldan/TinyStories", "train[:1000]")
    with pytest.raises(UserError, match="no such file"):
        resolve_source(tmp_path / "missing.txt")
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(UserError, match="unknown file type"):
        resolve_source(tmp_path / "a.csv")
