"""prepare: the DATA_DIR round trip on the shared files, tokenizers, splits, the hub path, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import (TRAIN_JSON, TRAIN_TXT, TRAIN_V2_TXT, VALID_TXT, assert_one_line_error, run_cli)
from tinystories.errors import UserError
from tinystories.data.prepare import load_data_dir, prepare
from tinystories.data.sources import iter_stories, normalize
from tinystories.data.tokenizer import Tokenizer, gpt2_base, gpt2_files

TRAIN_FILES = [TRAIN_TXT, TRAIN_V2_TXT, TRAIN_JSON]


@pytest.fixture(scope="module")
def shared_stories():
    train = [s for f in TRAIN_FILES for s in iter_stories(f)]
    val = list(iter_stories(VALID_TXT))
    return train, val


def _split_stories(data, eot):
    ids = np.asarray(data)
    ends = np.flatnonzero(ids == eot)
    assert len(ends) and ends[-1] == len(ids) - 1  # every story, the last one too, ends with eot
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [ids[a:b].tolist() for a, b in zip(starts, ends)]


def _check_meta(meta, d, train, val):
    assert meta["splits"]["train"]["stories"] == len(train) == 2316 + 1727 + 3000  # MANIFEST.md counts
    assert meta["splits"]["val"]["stories"] == len(val) == 3110
    for name, stories in (("train", train), ("val", val)):
        s = meta["splits"][name]
        assert s["bytes"] == sum(len(x.encode("utf-8")) for x in stories)
        assert s["tokens"] * 2 == (d / f"{name}.bin").stat().st_size
    by_path = {m["path"]: m for m in meta["sources"]}
    for f in [*TRAIN_FILES, VALID_TXT]:
        m = by_path[str(f.resolve())]
        assert m["bytes"] == f.stat().st_size and len(m["sha256"]) == 64


def test_bpe_round_trip_on_shared_files(tmp_path, shared_stories):
    train, val = shared_stories
    d = tmp_path / "data"
    proc = run_cli("prepare", *TRAIN_FILES, "--val", VALID_TXT, "--out", d, check=True)
    assert "7,043 stories" in proc.stdout
    meta = json.loads((d / "meta.json").read_text())
    _check_meta(meta, d, train, val)
    assert meta["vocab_size"] == 4096 and meta["tokenizer"]["kind"] == "bpe"

    data = load_data_dir(d)
    tok = data.tokenizer()
    assert data.train.dtype == np.uint16 and int(data.train.max()) < data.vocab_size
    # Decoding train.bin gives back the normalized stories exactly, in order.
    got = [tok.decode(ids) for ids in _split_stories(data.train, data.eot_id)]
    assert got == train
    assert [tok.decode(ids) for ids in _split_stories(data.val, data.eot_id)] == val

    # tokenizer.json stands alone in tokenizers and transformers.
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    ids = _split_stories(data.train, data.eot_id)[5]
    assert HFTokenizer.from_file(str(d / "tokenizer.json")).encode(train[5]).ids == ids
    hf = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
    assert hf(train[5])["input_ids"] == ids and hf.decode(ids) == train[5]


def test_gpt_neo_matches_transformers_gpt2(tmp_path, shared_stories):
    from transformers import GPT2TokenizerFast

    # transformers builds its GPT-2 tokenizer from the same two files, under its own names.
    enc, merges = gpt2_files()
    shutil.copy(enc, tmp_path / "vocab.json")
    shutil.copy(merges, tmp_path / "merges.txt")
    ref = GPT2TokenizerFast.from_pretrained(str(tmp_path))
    ours = gpt2_base()
    train, val = shared_stories
    sample = train[::40] + val[::40] + [
        "Hello  world!\n\n  “Quotes” and ‘apostrophes’ — dashes… 123,456.78 ñ é 日本語 🙂\ttab",
        " leading space", "trailing space ", "<|endoftext|>between<|endoftext|>", "",
    ]
    for text in sample:
        assert ours.encode(text).ids == ref(text)["input_ids"], text


def test_gpt_neo_top10k_round_trip(tmp_path, shared_stories):
    train, val = shared_stories
    d = tmp_path / "neo"
    meta = prepare(TRAIN_FILES, d, tokenizer="gpt-neo", vocab_size=10000, val=[VALID_TXT])
    _check_meta(meta, d, train, val)
    tk = meta["tokenizer"]
    assert meta["vocab_size"] == 10000 and (tk["eot_id"], tk["unk_id"]) == (0, 9999)
    data = load_data_dir(d)
    tok = data.tokenizer()
    gpt2_ids = np.array(tok.meta["gpt2_ids"])
    base = gpt2_base()

    # Every story whose tokens are all kept decodes exactly; the others hold exactly the unknowns
    # that meta.json reports, and each kept id maps back to the GPT-2 id it came from.
    for split, stories in (("train", train), ("val", val)):
        seqs = _split_stories(data.split(split), data.eot_id)
        assert len(seqs) == len(stories)
        decoded = tok.tk.decode_batch(seqs, skip_special_tokens=False)
        unk = exact = 0
        for i, (ids, story, text) in enumerate(zip(seqs, stories, decoded)):
            n = ids.count(tok.unk_id)
            unk += n
            if n == 0:
                assert text == story
                if i % 25 == 0:  # (re-encoding everything would double the test's time)
                    assert gpt2_ids[ids].tolist() == base.encode(story).ids
                exact += 1
        assert unk == meta["splits"][split]["unk_tokens"]
        assert exact > 0.8 * len(stories)
    assert meta["splits"]["val"]["unk_tokens"] > 0  # the val file has tokens the train files lack

    # A story with rare tokens: encode gives the unknown id for them, tokenizer.json stays usable.
    from transformers import PreTrainedTokenizerFast

    rare = "The xylophonist zygote quibbled."
    ids = tok.encode(rare)
    assert tok.unk_id in ids and max(ids) < 10000
    kept = val[0] if tok.unk_id not in tok.encode(val[0]) else train[0]
    hf = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
    assert hf.decode(tok.encode(kept)) == kept
    assert Tokenizer.load(d).meta["gpt2_ids"] == tok.meta["gpt2_ids"]


def test_val_fraction_split_is_deterministic_and_disjoint(tmp_path):
    f = tmp_path / "s.txt"
    stories = [f"Story {i}: the cat sat on mat {i % 7}." for i in range(600)]
    dup = stories[:50]  # repeated stories must still land on one side only
    f.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories + dup), encoding="utf-8")
    metas = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        metas[name] = prepare([f], tmp_path / name, vocab_size=300, val_fraction=0.2, seed=seed)
    split = {}
    for name in metas:
        dd = load_data_dir(tmp_path / name)
        split[name] = (list(dd.stories("train")), list(dd.stories("val")))
        train, val = split[name]
        assert not set(train) & set(val)
        assert len(train) + len(val) == 650 and 60 < len(set(val)) < 180
    assert split["a"] == split["b"]  # same seed, same split
    assert split["a"][1] != split["c"][1]
    assert metas["a"]["split"] == {"mode": "fraction", "val_fraction": 0.2, "seed": 0}


def test_train_stories_found_in_val_are_removed(tmp_path):
    val = list(iter_stories(VALID_TXT))[:40]
    own = [f"A new story number {i}, about a dog." for i in range(60)]
    train_f, val_f = tmp_path / "train.jsonl", tmp_path / "val.txt"
    # Val stories reappear in train with different whitespace: still the same story once normalized.
    rows = own + [v.replace(". ", ".  ") + "  \r\n" for v in val[:25]]
    train_f.write_text("\n".join(json.dumps({"text": t}) for t in rows), encoding="utf-8")
    val_f.write_text("".join(f"{s}\n<|endoftext|>\n" for s in val), encoding="utf-8")
    meta = prepare([train_f], tmp_path / "d", vocab_size=400, val=[val_f])
    assert meta["splits"]["train"]["stories"] == 60
    assert meta["splits"]["train"]["duplicates_removed"] == 25
    assert list(load_data_dir(tmp_path / "d").stories("train")) == own


def test_hub_dataset_path(tmp_path):
    """A local `datasets` dataset through the same `load_dataset` code as a hub name (no network):
    .txt splits that `datasets` loads one line per row, like TinyStoriesInstruct on the hub."""
    ds = tmp_path / "mydataset"
    ds.mkdir()
    records = [f"Words: cat, hat\nSummary: A cat finds hat {i}.\nStory: The cat found a hat.  It was red.\n"
               f"The end {i}." for i in range(30)]
    (ds / "train.txt").write_text("".join(f"{r}\n<|endoftext|>\n" for r in records), encoding="utf-8")
    (ds / "validation.txt").write_text("".join(f"Val story {i}.\n<|endoftext|>\n" for i in range(5)),
                                       encoding="utf-8")
    env = {"HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "d"
    run_cli("prepare", ds, "--val", f"{ds}:validation", "--out", out, "--vocab-size", 300, env=env, check=True)
    dd = load_data_dir(out)
    assert list(dd.stories("train")) == [normalize(r) for r in records]  # one document per record
    assert list(dd.stories("val")) == [f"Val story {i}." for i in range(5)]
    meta = dd.meta
    assert meta["sources"][0]["kind"] == "hub" and meta["sources"][0]["split"] == "train"
    assert meta["sources"][1]["split"] == "validation" and meta["sources"][1]["rows"] == 10

    # The same folder saved with `save_to_disk` loads too.
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["Saved one.", "Saved  two."]}).save_to_disk(str(saved))
    assert list(iter_stories(saved)) == ["Saved one.", "Saved two."]


def test_unreachable_hub_name_is_one_line_error(tmp_path):
    proc = run_cli("prepare", "roneneldan/TinyStories", "--out", tmp_path / "d", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "roneneldan/TinyStories", "local files")
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- bad input

def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["missing", "empty", "no_stories", "latin1", "binary", "json_dict",
                                  "json_numbers", "json_broken", "jsonl_bad"])
def test_bad_source_files(tmp_path, case):
    f = {"missing": tmp_path / "nope.txt", "empty": tmp_path / "empty.txt", "no_stories": tmp_path / "eot.txt",
         "latin1": tmp_path / "latin1.txt", "binary": tmp_path / "blob.txt", "json_dict": tmp_path / "d.json",
         "json_numbers": tmp_path / "n.json", "json_broken": tmp_path / "b.json",
         "jsonl_bad": tmp_path / "b.jsonl"}[case]
    content = {"empty": b"", "no_stories": b"\n<|endoftext|>\n  \n<|endoftext|>\n",
               "latin1": "Once upon a time, a caf\u00e9.\n<|endoftext|>\n".encode("latin-1"),
               "binary": bytes(range(256)) * 4, "json_dict": b'{"stories": ["a", "b"]}',
               "json_numbers": b'{"texts": ["fine", 42]}', "json_broken": b'["one", "two"',
               "jsonl_bad": b'{"text": "ok"}\n[1, 2]\n'}.get(case)
    if content is not None:
        f.write_bytes(content)
    need = {"missing": "no such file", "empty": "no stories", "no_stories": "no stories", "latin1": "UTF-8",
            "binary": "binary", "json_dict": "wrong JSON shape", "json_numbers": "wrong JSON shape",
            "json_broken": "not valid JSON", "jsonl_bad": "line 2"}[case]
    # The bad file comes second, after a good one: nothing half-written may stay behind.
    good = tmp_path / "good.txt"
    good.write_text("A good story.\n<|endoftext|>\n")
    out = tmp_path / "out"
    proc = run_cli("prepare", good, f, "--out", out, "--vocab-size", 300, "--val-fraction", 0.5)
    assert_one_line_error(proc, str(f), need)
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("args,need", [
    (["--vocab-size", "70000"], "--vocab-size 70000"),
    (["--vocab-size", "256"], "--vocab-size 256"),
    (["--tokenizer", "gpt-neo", "--vocab-size", "257"], "--vocab-size 257"),
    (["--tokenizer", "gpt-neo", "--vocab-size", "60000"], "50257"),
    (["--val-fraction", "0"], "--val-fraction 0"),
    (["--val-fraction", "1.5"], "--val-fraction 1.5"),
])
def test_bad_options(tmp_path, args, need):
    out = tmp_path / "out"
    proc = run_cli("prepare", TRAIN_TXT, "--out", out, *args)
    assert_one_line_error(proc, need)
    assert not out.exists()


def test_existing_out_dir_needs_force(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("".join(f"Story {i} about a frog.\n<|endoftext|>\n" for i in range(40)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("prepare", f, "--out", out, "--vocab-size", 300)
    assert_one_line_error(proc, str(out), "--force")
    assert (out / "keep.txt").read_text() == "mine"
    run_cli("prepare", f, "--out", out, "--vocab-size", 300, "--force", check=True)
    assert not (out / "keep.txt").exists() and load_data_dir(out).meta["splits"]["train"]["stories"] > 0


def test_load_data_dir_rejects_non_data_dirs(tmp_path, tiny_data):
    with pytest.raises(UserError, match="no such directory"):
        load_data_dir(tmp_path / "nope")
    with pytest.raises(UserError, match="no meta.json"):
        load_data_dir(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    with open(broken / "train.bin", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(UserError, match="truncated"):
        load_data_dir(broken)


def test_tiny_data_fixture(tiny_data):
    dd = load_data_dir(tiny_data)
    assert dd.vocab_size == 512 and dd.meta["splits"]["train"]["stories"] == 400
    assert dd.meta["splits"]["val"]["stories"] == 100
    assert len(dd.train) > 100_000 and int(dd.train.max()) < 512


def test_atomic_outputs_get_the_modes_of_a_plain_write(tmp_path):
    """Temporary files and directories are private (0600/0700) until renamed; what they become must not be,
    or a model written on a shared machine could not be read by anyone else."""
    import os

    from tinystories.runtime.files import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "out") as d:
            atomic_write_text(d / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "f.txt").stat().st_mode & 0o777 == 0o644
