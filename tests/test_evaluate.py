"""Evaluation without a judge: loss and bits per byte, Rouge and the corpus index, diversity, probes, compare."""

from __future__ import annotations

import json
import math
import random
import re
import shutil

import numpy as np
import pytest

from conftest import TRAIN_JSON, TRAIN_TXT, TRAIN_V2_TXT, VALID_TXT, assert_one_line_error, run_cli
from tinystories.errors import UserError
from tinystories.evaluate.ngram_index import CorpusScan
from tinystories.evaluate.rouge import rouge_n, tokenize


def read_stories(path, n=None):
    text = path.read_text(encoding="utf-8")
    stories = [s.strip() for s in re.split(r"^<\|endoftext\|>\s*$", text, flags=re.M) if s.strip()]
    return stories[:n] if n else stories


def write_txt(path, stories):
    path.write_text("".join(s + "\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model, tmp_path_factory):
    """A copy of the shared tiny run (conftest: 2 layers of 64, trained by `train()` on real stories), so that its
    completions share words and bigrams with the training text (Rouge values are not all zero). A copy, because
    these tests write reports into the model directory."""
    d = tmp_path_factory.mktemp("tiny") / "model"
    shutil.copytree(tiny_model, d, ignore=shutil.ignore_patterns("checkpoints", "eval", "*.lock"))
    return d


# ------------------------------------------------------------------ Rouge

def test_rouge_by_hand():
    r = rouge_n("The cat sat on the mat.", "the cat LAY on the mat")   # 3 of 5 bigrams shared each way
    assert (r.precision, r.recall, r.fmeasure) == (0.6, 0.6, pytest.approx(0.6))
    r = rouge_n("the the the", "the the")                             # repeats are clipped
    assert (r.precision, r.recall, r.fmeasure) == (0.5, 1.0, pytest.approx(2 / 3))
    assert tokenize("Don't stop, Lily-May! Café 42") == ["don", "t", "stop", "lily", "may", "caf", "42"]
    assert rouge_n("one", "one two").precision == 0.0                  # no bigram at all
    r1 = rouge_n("a b c d", "c d e", n=1)
    assert (r1.precision, r1.recall) == (0.5, pytest.approx(2 / 3))


def test_rouge_matches_the_rouge_score_package():
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rs.RougeScorer(["rouge1", "rouge2"], use_stemmer=False)
    stories = read_stories(VALID_TXT, 60)
    rng = random.Random(0)
    for _ in range(40):
        a, b = rng.sample(stories, 2)
        a = a[:rng.randrange(50, len(a))]
        ref = scorer.score(b, a)              # (target, prediction)
        for n, name in ((1, "rouge1"), (2, "rouge2")):
            ours = rouge_n(a, b, n)
            assert ours.precision == pytest.approx(ref[name].precision, abs=1e-12)
            assert ours.recall == pytest.approx(ref[name].recall, abs=1e-12)
            assert ours.fmeasure == pytest.approx(ref[name].fmeasure, abs=1e-12)


# ------------------------------------------------------------------ the corpus index

def test_kgram_share_and_closest_by_hand():
    corpus = ["The cat sat on a mat.", "A dog ran in the park.", "the cat", "sat on",
              "The cat sat on the mat and the cat sat on the mat."]
    scan = CorpusScan(["the cat sat on the mat", "a dog ran home"]).scan(corpus)
    k = scan.kgram_report()
    # generated 2-grams {the cat, cat sat, sat on, on the, the mat, a dog, dog ran, ran home}: all but ran home
    assert (k["2"]["distinct"], k["2"]["found"]) == (8, 7)
    assert (k["4"]["distinct"], k["4"]["found"]) == (4, 3)      # the cat sat on, ... on the mat; a dog ran home not
    assert (k["6"]["distinct"], k["6"]["found"]) == (1, 1)
    assert k["2"]["corpus_kgrams"] == 5 + 5 + 1 + 1 + 12
    # "cat sat" is not made from the end of one story and the start of the next: k-grams stay inside a story
    assert CorpusScan(["cat sat"]).scan(["the cat", "sat on"]).kgram_report()["2"]["found"] == 0
    a, b = scan.closest
    assert (a.index, a.score) == (4, 1.0)                          # all 5 bigrams of the text are in story 4
    assert (b.index, b.score) == (1, pytest.approx(2 / 3))         # a dog, dog ran


def test_corpus_index_equals_brute_force():
    stories = read_stories(TRAIN_TXT, 400)
    rng = random.Random(1)
    gen = [s[len(s) // 3:] for s in rng.sample(read_stories(VALID_TXT, 200), 6)] + ["Lily Lily Lily Lily"]
    scan = CorpusScan(gen, chunk=97).scan(stories)                 # many chunks, uneven last one
    for g, c in zip(gen, scan.closest):
        scores = [rouge_n(g, s).precision for s in stories]
        best = max(scores)
        assert c.score == pytest.approx(best, abs=1e-12) and c.index == scores.index(best)
    words = [tokenize(s) for s in stories]
    for k in (2, 4, 6):
        corpus = {tuple(w[i:i + k]) for w in words for i in range(len(w) - k + 1)}
        mine = {tuple(t[i:i + k]) for t in map(tokenize, gen) for i in range(len(t) - k + 1)}
        rep = scan.kgram_report()[str(k)]
        assert rep["distinct"] == len(mine) and rep["found"] == len(mine & corpus)


# ------------------------------------------------------------------ diversity end to end

def test_cut_story():
    from tinystories.evaluate.diversity import cut_story

    assert cut_story("a b c d e f g h i j", 0.4) == ("a b c d", " e f g h i j")
    assert cut_story("One two.\n\nThree four five.", 0.6) == ("One two.\n\nThree", " four five.")


def test_diversity_end_to_end(tiny, tmp_path):
    from tinystories.evaluate.diversity import DiversityConfig, diversity
    from tinystories.data.sources import iter_stories

    train = write_txt(tmp_path / "train.txt", read_stories(TRAIN_TXT, 150))
    r = diversity(DiversityConfig(str(tiny), [str(train)], stories=5, max_new_tokens=12, out=str(tmp_path / "out"),
                                  device="cpu"))
    corpus = list(iter_stories(str(train)))
    assert r["settings"]["training_stories"] == len(corpus) and len(r["stories"]) == 5
    for s in r["stories"]:
        assert s["prompt"] + s["original_ending"] in corpus            # a real story, cut in two
        assert s["rouge2_p_vs_original"] == rouge_n(s["completion"], s["original_ending"]).precision
        others = [o["completion"] for o in r["stories"] if o is not s]
        assert s["max_rouge2_f"] == max(rouge_n(s["completion"], o).fmeasure for o in others)
        best = max(rouge_n(s["completion"], c).precision for c in corpus)
        assert s["closest"]["rouge2_p"] == pytest.approx(best, abs=1e-12)
    assert (tmp_path / "out" / "diversity.png").stat().st_size > 0
    assert "| 4 |" in (tmp_path / "out" / "diversity.md").read_text()


# ------------------------------------------------------------------ probes

def test_probe_set_is_ours_and_well_formed():
    from tinystories.evaluate.probes import load_probes

    probes = load_probes()
    assert len(probes) >= 30
    for cat in ("factual", "reasoning", "context"):
        assert sum(p.category == cat for p in probes) >= 10
    # like the paper's, the prompts are not in the training data: no 10-word run of one occurs there
    train = " ".join(" ".join(tokenize(p.read_text(encoding="utf-8"))) for p in (TRAIN_TXT, TRAIN_V2_TXT))
    train += " ".join(" ".join(tokenize(s)) for s in json.loads(TRAIN_JSON.read_text())["texts"])
    for p in probes:
        w = tokenize(p.prompt)
        for i in range(max(len(w) - 9, 1)):
            assert " " + " ".join(w[i:i + 10]) + " " not in train, p.prompt


def test_probe_scoring_by_hand():
    from tinystories.evaluate.probes import Probe, score, summarize

    p = Probe("factual", "Alice was so tired that she went", ["to bed", "to sleep"], ["room", "home"])
    assert score(p, " to bed. Then she slept.") == "pass"
    assert score(p, " upstairs, and then TO BED!") == "pass"
    assert score(p, " into her room to read.") == "partial"
    assert score(p, " outside. Later she went to bed.") == "fail"            # only the first sentence counts
    assert score(p, " tobed") == "fail"                                      # whole words
    assert score(p, " a b c d e f g h i j k l to bed") == "fail"             # past the 12-word window
    s = summarize([{"category": "factual", "result": r} for r in ("pass", "partial", "fail", "pass")])
    assert s["factual"] == {"pass": 2, "partial": 1, "fail": 1, "n": 4, "score": 0.625} and s["all"]["n"] == 4


def test_probes_on_a_model(tiny, tmp_path):
    from tinystories.evaluate.probes import load_probes, run_probes, score

    r = run_probes(tiny, out=str(tmp_path), device="cpu", max_new_tokens=8)
    probes = load_probes()
    assert len(r["results"]) == len(probes) and r["summary"]["all"]["n"] == len(probes)
    for res, p in zip(r["results"], probes):
        assert res["prompt"] == p.prompt and res["result"] == score(p, res["completion"])
    for cat, v in r["summary"].items():
        assert v["pass"] + v["partial"] + v["fail"] == v["n"]
    assert (tmp_path / "probes.md").is_file()


# ------------------------------------------------------------------ loss and bits per byte

def _expected(tiny, stories, max_tokens=None):
    from tinystories.evaluate.metrics import stream_loss
    from tinystories.model.modeldir import load_model

    model, tok = load_model(tiny)
    ids = [t for enc in tok.encode_batch(stories) for t in enc + [tok.eot_id]]
    r = stream_loss(model, np.array(ids), model.config.context, batch_size=8, max_tokens=max_tokens)
    return r, ids, sum(len(s.encode("utf-8")) for s in stories)


def test_loss_streamed_equals_one_pass_and_bpb_by_definition(tiny, tiny_data, tmp_path):
    from tinystories.evaluate.loss import LossConfig, evaluate_loss
    from tinystories.data.sources import iter_stories

    data = write_txt(tmp_path / "valid.txt", read_stories(VALID_TXT, 40))
    stories = list(iter_stories(str(data)))
    want, ids, nbytes = _expected(tiny, stories)
    # batch 1: pieces of 128 * 16 tokens, so the stream is scored in many pieces
    r = evaluate_loss(LossConfig(str(tiny), str(data), batch_size=1, out=str(tmp_path / "out"), device="cpu"))
    assert r["tokens_scored"] == want.tokens == len(ids) - 1 > 5000
    assert r["nats_per_token"] == pytest.approx(want.mean, rel=1e-6)
    assert r["perplexity"] == pytest.approx(math.exp(want.mean), rel=1e-6)
    assert r["bytes"] == nbytes
    assert r["bits_per_byte"] == pytest.approx(want.nats / math.log(2) / nbytes, rel=1e-6)

    part = evaluate_loss(LossConfig(str(tiny), str(data), max_tokens=1000, out=str(tmp_path / "out"), device="cpu"))
    want_part, _, _ = _expected(tiny, stories, max_tokens=1000)
    assert part["tokens_scored"] == 1000 and part["nats_per_token"] == pytest.approx(want_part.mean, rel=1e-6)

    # a DATA_DIR made with another tokenizer is refused
    from tinystories.data.prepare import prepare

    other = tmp_path / "other_data"
    prepare([str(write_txt(tmp_path / "few.txt", read_stories(TRAIN_TXT, 60)))], other, tokenizer="bpe",
            vocab_size=300, val=[str(data)])
    with pytest.raises(UserError, match="different tokenizer"):
        evaluate_loss(LossConfig(str(tiny), str(other), device="cpu"))


def test_loss_on_a_data_dir_equals_loss_on_its_source(tiny_data, tmp_path):
    """`prepare`'s val.bin and the val text tokenized on the fly give the same numbers."""
    import torch

    from tinystories.model.config import ModelConfig
    from tinystories.evaluate.loss import LossConfig, evaluate_loss
    from tinystories.model.gpt_neo import GPTNeo
    from tinystories.model.modeldir import save_model
    from tinystories.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_data)
    torch.manual_seed(0)
    model = GPTNeo(ModelConfig(vocab_size=tok.vocab_size, context=64, hidden=32, layers=1, heads=2, window=16))
    save_model(tmp_path / "m", model, tok)
    from_dir = evaluate_loss(LossConfig(str(tmp_path / "m"), str(tiny_data), out=str(tmp_path), device="cpu"))
    from_txt = evaluate_loss(LossConfig(str(tmp_path / "m"), str(tiny_data.parent / "val.txt"), out=str(tmp_path),
                                        device="cpu"))
    meta = json.loads((tiny_data / "meta.json").read_text())["splits"]["val"]
    assert from_dir["tokens_scored"] == from_txt["tokens_scored"] == meta["tokens"] - 1
    assert from_dir["bytes"] == from_txt["bytes"] == meta["bytes"]
    assert from_dir["nats_per_token"] == pytest.approx(from_txt["nats_per_token"], rel=1e-6)
    assert from_dir["bits_per_byte"] == pytest.approx(from_txt["bits_per_byte"], rel=1e-6)


# ------------------------------------------------------------------ compare and the CLI

def test_cli_loss_and_compare(tiny, tmp_path):
    from tinystories.evaluate.compare import compare
    from tinystories.evaluate.loss import LossConfig, evaluate_loss

    data = write_txt(tmp_path / "valid.txt", read_stories(VALID_TXT, 10))
    other = tmp_path / "other"
    shutil.copytree(tiny, other, ignore=shutil.ignore_patterns("eval"))
    p = run_cli("evaluate", "loss", tiny, "--data", data, "--device", "cpu", check=True)
    bpb = json.loads((tiny / "eval" / "loss.json").read_text())["bits_per_byte"]
    assert f"{bpb:.4f} bits/byte" in p.stdout
    evaluate_loss(LossConfig(str(other), str(data), device="cpu"))
    # a probes report for one of them only: compare shows what each has
    (other / "eval" / "probes.json").write_text(json.dumps(
        {"kind": "probes", "summary": {"factual": {"score": 0.5}, "all": {"score": 0.25}}}))
    p = run_cli("evaluate", "compare", tiny, other, "--plot", tmp_path / "cmp.png", "--out", tmp_path / "cmp.md",
                check=True)
    lines = p.stdout.splitlines()
    assert lines[0] == "| metric | model | other |"
    assert any(l.startswith("| loss: bits/byte |") and f"{bpb:.3f}" in l for l in lines)
    assert "| probes: all | - | 0.250 |" in lines
    assert (tmp_path / "cmp.png").stat().st_size > 0 and (tmp_path / "cmp.json").is_file()

    assert_one_line_error(run_cli("evaluate", "loss", tmp_path, "--data", data), "not a model directory")
    with pytest.raises(UserError, match="no such run directory"):
        compare([str(tmp_path / "nothing")], None)
