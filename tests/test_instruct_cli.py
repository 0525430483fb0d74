"""TinyStories-Instruct end to end: `instruct build/check`, the summarizer and the judge against a real
chat-completions server on 127.0.0.1, `generate` with instruction flags, `evaluate instruct`."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import TRAIN_TXT, TRAIN_V2_TXT, LocalServer, assert_one_line_error, run_cli
from tinystories.data.instruct.build import BuildConfig, build_records, make_summarizer
from tinystories.data.instruct.records import InstructRecord, format_instructions, format_prompt, format_record, read_records, split_records
from tinystories.data.instruct.words import word_used
from tinystories.evaluate.adherence import adherence
from tinystories.data.instruct.evalset import exercise_text, load_instructions
from tinystories.data.instruct.words import lemma, word_tokens


def read_stories(path, n):
    return split_records(path.read_text(encoding="utf-8"))[:n]


# ---------------------------------------------------------------- a chat-completions server

class ChatServer(LocalServer):
    """POST /v1/chat/completions answered by `reply(messages) -> str`; every request body is kept."""

    def __init__(self, reply):
        super().__init__(_Handler)
        self.reply, self.requests, self.lock = reply, [], threading.Lock()
        self.start()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        content = self.server.reply(body["messages"])
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def summary_for(story: str) -> str:
    words = word_tokens(story)
    return f"A story of {len(words)} words that starts with {words[0]}."


def summarizer_reply(messages):
    prompt = messages[-1]["content"]
    return "  " + summary_for(prompt.split("Story:\n", 1)[1]) + "\n"


@pytest.fixture
def server_factory():
    servers = []

    def make(reply):
        s = ChatServer(reply)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


# ---------------------------------------------------------------- summaries

def test_summarizer_against_a_local_server(server_factory, tmp_path):
    server = server_factory(summarizer_reply)
    stories = read_stories(TRAIN_TXT, 12)
    summarize = make_summarizer(server.url, "tiny-summarizer", cache=tmp_path / "summaries.jsonl")
    recs = list(build_records(stories, BuildConfig(seed=0), summarize))
    with_summary = [(s, r) for s, r in zip(stories, recs) if r.summary]
    assert 2 <= len(with_summary) < 12
    assert len(server.requests) == len(with_summary)         # asked only for the summaries drawn
    for story, r in with_summary:
        assert r.summary == summary_for(story)              # the server's answer, whitespace tidied
    assert all(req["model"] == "tiny-summarizer" for req in server.requests)
    assert server.requests[0]["messages"][0]["content"].startswith("Summarize the following children's story")


def test_cli_build_with_summarizer_and_check(server_factory, tmp_path):
    server = server_factory(summarizer_reply)
    out = tmp_path / "instruct.txt"
    cache = tmp_path / "summaries.jsonl"
    proc = run_cli("instruct", "build", TRAIN_TXT, "--out", out, "--limit", 30, "--seed", 2,
                   "--summarizer-url", server.url, "--summarizer-model", "m", "--summary-cache", cache, check=True)
    assert "wrote 30 instruct records" in proc.stdout
    recs = read_records(out)
    stories = read_stories(TRAIN_TXT, 30)
    assert [r.story for r in recs] == [s.strip() for s in stories]
    assert sum(bool(r.summary) for r in recs) == len(server.requests) > 0
    assert all(r.summary == summary_for(r.story) for r in recs if r.summary)
    # `prepare` reads the file as 30 documents, each record (instructions and story) whole
    import numpy as np

    from tinystories.data.prepare import prepare
    from tinystories.data.tokenizer import Tokenizer

    meta = prepare([out], tmp_path / "data", vocab_size=400, val_fraction=0.2)
    assert meta["splits"]["train"]["stories"] + meta["splits"]["val"]["stories"] == 30
    tok = Tokenizer.load(tmp_path / "data")
    ids = np.fromfile(tmp_path / "data" / "train.bin", dtype=np.uint16).tolist()
    docs = tok.decode(ids).split("<|endoftext|>")
    train_docs = {format_record(r) for r in recs}
    assert all(d.strip() in train_docs for d in docs if d.strip())
    # same seed, same records; the summaries come from the cache, not from the server again
    again = tmp_path / "again.txt"
    asked = len(server.requests)
    run_cli("instruct", "build", TRAIN_TXT, "--out", again, "--limit", 30, "--seed", 2,
            "--summarizer-url", server.url, "--summarizer-model", "m", "--summary-cache", cache, check=True)
    assert again.read_text() == out.read_text() and len(server.requests) == asked
    # the packaged evaluation set is disjoint from these records and from the V2 stories
    proc = run_cli("instruct", "check", "--against", out, TRAIN_V2_TXT, check=True)
    assert "50 instruction sets, disjoint from" in proc.stdout
    # an evaluation set that copies a training record is caught
    leaky = tmp_path / "leaky.txt"
    r = next(r for r in recs if r.words)
    leaky.write_text(format_instructions(r.instructions()) + "<|endoftext|>\n")
    assert_one_line_error(run_cli("instruct", "check", leaky, "--against", out), "overlaps the training data",
                          "word set of set(s) 1")


def test_cli_build_draws_are_passes_with_their_own_instructions(tmp_path):
    out = tmp_path / "drawn.txt"
    proc = run_cli("instruct", "build", TRAIN_TXT, "--out", out, "--limit", 20, "--draws", 3, "--seed", 5,
                   check=True)
    assert "wrote 60 instruct records" in proc.stdout
    recs = read_records(out)
    stories = [s.strip() for s in read_stories(TRAIN_TXT, 20)]
    # three whole passes in source order: a story's records are 20 apart, never side by side
    assert [r.story for r in recs] == stories * 3
    passes = [[format_instructions(r.instructions()) for r in recs[i * 20:(i + 1) * 20]] for i in range(3)]
    assert sum(a != b for a, b in zip(passes[0], passes[1])) >= 10
    assert sum(a != b for a, b in zip(passes[1], passes[2])) >= 10
    # every draw is true of its story, as in a single pass
    for r in recs:
        assert all(word_used(w, r.story) for w in r.words)
        assert r.sentence is None or r.sentence in r.story
    # seeded: the same command writes the same file
    again = tmp_path / "again.txt"
    run_cli("instruct", "build", TRAIN_TXT, "--out", again, "--limit", 20, "--draws", 3, "--seed", 5, check=True)
    assert again.read_text() == out.read_text()


def test_cli_instruct_bad_input(tmp_path):
    out = tmp_path / "o.txt"
    out.write_text("x")
    assert_one_line_error(run_cli("instruct", "build", tmp_path / "missing.txt", "--out", tmp_path / "n.txt"),
                          "missing.txt")
    assert_one_line_error(run_cli("instruct", "build", TRAIN_TXT, "--out", out, "--limit", 2),
                          "already exists", "--force")
    assert_one_line_error(run_cli("instruct", "build", TRAIN_TXT, "--out", tmp_path / "n.txt", "--limit", 0),
                          "--limit")
    assert_one_line_error(run_cli("instruct", "build", TRAIN_TXT, "--out", tmp_path / "n.txt",
                                  "--frequency-stories", 0), "--frequency-stories")
    assert_one_line_error(run_cli("instruct", "build", TRAIN_TXT, "--out", tmp_path / "n.txt", "--draws", 0),
                          "--draws")
    assert_one_line_error(run_cli("instruct", "build", TRAIN_TXT, "--out", tmp_path / "n.txt",
                                  "--summarizer-url", "http://127.0.0.1:9/v1"), "--summarizer-model")
    bad = tmp_path / "bad.txt"
    bad.write_text("Words: dog, cat\n<|endoftext|>\nOnce upon a time\n<|endoftext|>\n")
    assert_one_line_error(run_cli("instruct", "check", bad, "--against", TRAIN_TXT), "bad.txt: record 2",
                          "not a field")
    assert_one_line_error(run_cli("instruct", "check", tmp_path / "nope.txt", "--against", TRAIN_TXT),
                          "nope.txt", "no such")
    assert not (tmp_path / "n.txt").exists()


# ---------------------------------------------------------------- a model trained on records

@pytest.fixture(scope="module")
def instruct_model(tmp_path_factory):
    """A 2-layer model trained for a few seconds, by the project's own `prepare` and `train()`, on instruct
    records built from real stories."""
    from tinystories.data.prepare import prepare
    from tinystories.train.config import TrainConfig
    from tinystories.train.loop import train

    root = tmp_path_factory.mktemp("instruct")
    records = root / "records.txt"
    records.write_text("".join(format_record(r) + "\n<|endoftext|>\n" for r in build_records(read_stories(TRAIN_TXT, 300))),
                       encoding="utf-8")
    prepare([str(records)], root / "data", tokenizer="bpe", vocab_size=512, val_fraction=0.05)
    out = root / "model"
    train(TrainConfig(data=str(root / "data"), out=str(out), preset="1M", context=64, batch_size=8, max_steps=40,
                      lr=3e-3, warmup_steps=4, threads=1, samples=0, eval_every=0, final_eval_tokens=2048,
                      precision="fp32", model={"hidden": 32, "layers": 2, "heads": 2, "window": 32, "context": 256}))
    return out


def test_generate_builds_the_instruction_prompt(instruct_model):
    proc = run_cli("generate", instruct_model, "--words", "dog, happy,run", "--features", "dialogue,Twist",
                   "--sentence", "The dog barked.", "--summary", "A dog finds a bone.", "--max-new-tokens", 12,
                   "--seed", 1, "--no-stream", check=True)
    expected = format_prompt(words=["dog", "happy", "run"], features=["Dialogue", "Twist"],
                                sentence="The dog barked.", summary="A dog finds a bone.")
    assert proc.stdout.startswith(expected)
    assert len(proc.stdout) > len(expected)
    # a PROMPT with instruction flags is the story's start, after `Story:`
    proc = run_cli("generate", instruct_model, "Once upon a time", "--words", "cat", "--max-new-tokens", 5,
                   "--seed", 1, "--no-stream", check=True)
    assert proc.stdout.startswith("Words: cat\nStory: Once upon a time")


def test_generate_instruction_flags_bad_input(instruct_model):
    assert_one_line_error(run_cli("generate", instruct_model, "--features", "Dialogue,Sparkles"),
                          "--features", "Sparkles", "Dialogue, BadEnding")
    assert_one_line_error(run_cli("generate", instruct_model, "--words", " , "), "--words")
    assert_one_line_error(run_cli("generate", instruct_model, "--sentence", "  "), "--sentence")


SETS = """\
Words: dog, happy, run
Features: Dialogue, Twist
<|endoftext|>
Sentence: The cat sat on the mat.
Words: cat, sit, soft
Story: Once upon a time, there was a cat.
<|endoftext|>
Summary: A girl finds a red ball in the park.
Features: MoralValue
<|endoftext|>
"""


def test_evaluate_instruct_scores_what_it_wrote(instruct_model, tmp_path):
    from tinystories.evaluate.instruct import InstructEvalConfig, evaluate_instruct

    sets_file = tmp_path / "sets.txt"
    sets_file.write_text(SETS)
    sets = load_instructions(sets_file)
    out = tmp_path / "rep"
    proc = run_cli("evaluate", "instruct", instruct_model, "--instructions", sets_file, "--samples", 2,
                   "--max-new-tokens", 40, "--out", out, check=True)
    assert "required words used" in proc.stdout
    report = json.loads((out / "instruct.json").read_text())
    assert report["kind"] == "instruct" and (out / "instruct.md").is_file()
    assert [row["prompt"] for row in report["sets"]] == [format_prompt(s) for s in sets]
    assert report["sets"][1]["prompt"].endswith("Story: Once upon a time, there was a cat.")
    shares = []
    for s, row in zip(sets, report["sets"]):
        assert len(row["stories"]) == 2
        for st in row["stories"]:
            again = adherence(s, st["text"]).to_dict()
            assert {k: st[k] for k in again} == again      # the stored scores are those of the stored story
            if st["word_share"] is not None:
                shares.append(st["word_share"])
    assert report["sets"][1]["stories"][0]["text"].startswith("Once upon a time, there was a cat.")
    assert report["summary"]["word_share"]["mean"] == pytest.approx(sum(shares) / len(shares))
    assert report["summary"]["word_share"]["n"] == 4 and report["summary"]["feature_share"]["n"] == 4

    # the plain baseline: the same sets, prompted with the story start only
    plain = evaluate_instruct(InstructEvalConfig(str(instruct_model), instructions=str(sets_file), samples=1,
                                                 max_new_tokens=20, plain=True, out=str(out)))
    assert json.loads((out / "instruct.json").read_text()) == plain
    assert [row["prompt"] for row in plain["sets"]] == ["", "Once upon a time, there was a cat.", ""]
    assert plain["settings"]["plain"] is True
    # the compare command reads instruct reports
    proc = run_cli("evaluate", "compare", out, "--plot", tmp_path / "c.png", check=True)
    assert "instruct: word share" in proc.stdout


GRADE_RE = re.compile(r"This is the story the student wrote:\n\n(.*?)\n\nFirst, give", re.S)


def grades_for(story: str) -> dict:
    h = int(hashlib.sha256(story.encode()).hexdigest(), 16)
    return {c: float(1 + (h >> (8 * i)) % 10) for i, c in enumerate(["grammar", "creativity", "consistency", "plot"])}


def judge_reply(messages):
    if len(messages) == 1:
        return "The story is short but it tries."
    story = GRADE_RE.search(messages[0]["content"]).group(1)
    g = grades_for(story)
    return (f"Grammar: {g['grammar']:g}/10, Creativity: {g['creativity']:g}/10, "
            f"Consistency: {g['consistency']:g}/10, Plot: {g['plot']:g}/10, Age group: B")


def test_evaluate_instruct_with_a_judge(instruct_model, tmp_path, server_factory):
    from tinystories.evaluate.instruct import InstructEvalConfig, evaluate_instruct

    server = server_factory(judge_reply)
    out = tmp_path / "rep"
    report = evaluate_instruct(InstructEvalConfig(str(instruct_model), limit=2, samples=2, max_new_tokens=30,
                                                  judge_url=server.url, judge_model="judge-1", cache="",
                                                  out=str(out)))
    sets = load_instructions()[:2]
    stories = [st for row in report["sets"] for st in row["stories"]]
    assert len(stories) == 4 and len(server.requests) == 8       # two turns per story
    for st in stories:
        assert st["judged"] and st["grades"] == grades_for(st["text"].strip())
    first_turns = [r["messages"][0]["content"] for r in server.requests if len(r["messages"]) == 1]
    for s in sets:
        assert sum(exercise_text(s) in t for t in first_turns) == 2
    assert "The story should contain the words: jump, puddle, muddy." in exercise_text(sets[0])
    means = report["summary"]["judge_consistency"]["mean"]
    assert means == pytest.approx(sum(st["grades"]["consistency"] for st in stories) / 4)
    assert report["judge"]["model"] == "judge-1" and report["summary"]["judge_unparseable"] == 0


def test_evaluate_instruct_bad_input(instruct_model, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Words: dog\nWords: cat\n<|endoftext|>\n")
    assert_one_line_error(run_cli("evaluate", "instruct", instruct_model, "--instructions", bad),
                          "bad.txt: record 1", "appears twice")
    assert_one_line_error(run_cli("evaluate", "instruct", instruct_model, "--instructions", tmp_path / "no.txt"),
                          "no.txt", "no such instruction file")
    assert_one_line_error(run_cli("evaluate", "instruct", tmp_path / "nomodel"), "nomodel")
    assert_one_line_error(run_cli("evaluate", "instruct", instruct_model, "--samples", 0), "--samples")
    assert_one_line_error(run_cli("evaluate", "instruct", instruct_model, "--judge-url", "http://127.0.0.1:9/v1"),
                          "--judge-model")
    assert_one_line_error(run_cli("evaluate", "instruct", instruct_model, "--words-probe", tmp_path / "np.txt"),
                          "--words-probe", "np.txt")
    one = tmp_path / "one.txt"
    one.write_text("Words: dog, run, happy\nStory: The dog ran.\n<|endoftext|>\n")
    assert_one_line_error(run_cli("evaluate", "instruct", instruct_model, "--limit", 1, "--samples", 1,
                                  "--max-new-tokens", 5, "--words-probe", one), "at least 2 records")


def test_words_probe_is_the_story_loss_after_other_words_minus_own(instruct_model, tmp_path):
    """The probe against the model's own loss, computed here from the two full training texts."""
    import torch

    from tinystories.model.modeldir import load_model

    recs = [r for r in build_records(read_stories(TRAIN_V2_TXT, 40), BuildConfig(seed=1, p_field=1.0))
            if r.words]
    a = recs[0]
    b = next(r for r in recs[1:] if not {lemma(w) for w in r.words} & {lemma(w) for w in a.words})
    path = tmp_path / "two.txt"
    path.write_text("".join(format_record(r) + "\n<|endoftext|>\n" for r in (a, b)))
    out = tmp_path / "rep"
    proc = run_cli("evaluate", "instruct", instruct_model, "--limit", 1, "--samples", 1, "--max-new-tokens", 5,
                   "--words-probe", path, "--out", out, check=True)
    assert "words probe: a story costs" in proc.stdout
    probe = json.loads((out / "instruct.json").read_text())["words_probe"]
    assert probe["n"] == 2 and "words probe" in (out / "instruct.md").read_text()

    model, tok = load_model(instruct_model)
    ctx = model.config.context

    def story_loss(rec, words):
        lines = format_instructions(InstructRecord(story="", words=words, sentence=rec.sentence,
                                                         features=rec.features, order=rec.order))
        head = [tok.eot_id] + tok.encode(lines + "Story:")
        return head, tok.encode(" " + rec.story)

    expected = []
    for rec, other in ((a, b), (b, a)):
        (h1, story), (h2, _) = story_loss(rec, rec.words), story_loss(rec, other.words)
        story = story[:ctx - max(len(h1), len(h2))]
        costs = []
        for head in (h1, h2):
            ids = torch.tensor([head + story])
            targets = ids[:, 1:].clone()
            targets[:, :len(head) - 1] = -1                 # score the story's tokens only
            with torch.no_grad():
                costs.append(model(ids[:, :-1], targets=targets).item() * len(story))
        expected.append(costs[1] - costs[0])
    assert probe["mean"] == pytest.approx(sum(expected) / 2, rel=1e-4, abs=1e-4)
    assert expected[0] != expected[1]                         # two different stories, two different costs


def test_paired_word_share_on_known_reports():
    from tinystories.errors import UserError
    from tinystories.evaluate.instruct import paired_word_share

    def report(shares):
        return {"sets": [{"instructions": f"Words: w{i}", "stories": [{"word_share": v} for v in row]}
                         for i, row in enumerate(shares)]}

    a = report([[0.5, 0.5], [0.0, 0.0], [1 / 3], [None]])
    b = report([[0.0, 0.0], [0.0, 0.0], [1 / 3], [0.5]])
    p = paired_word_share(a, b)
    assert p["mean"] == pytest.approx(0.5 / 3) and p["n"] == 3     # the set without a share on one side drops
    assert (p["sets_a_higher"], p["sets_b_higher"], p["sets_tied"]) == (1, 0, 2)
    assert p["ci95"][0] == pytest.approx(0.0) and p["ci95"][1] == pytest.approx(0.5)
    assert paired_word_share(b, a)["mean"] == pytest.approx(-0.5 / 3)
    c = report([[0.5]] * 4)
    c["sets"][2]["instructions"] = "Words: other"
    with pytest.raises(UserError, match="same instruction sets"):
        paired_word_share(a, c)
