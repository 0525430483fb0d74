"""The LLM client and GPT-Eval, end to end against a real chat-completions server on 127.0.0.1.

The server (below) grades each completion with numbers derived from its text, and can be told to
answer 429, 500, 401, malformed grades, or to hang, on chosen requests. The report must hold exactly
what the server said.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import yaml

from conftest import EVAL_PROMPTS, LocalServer, assert_one_line_error, run_cli
from tinystories.errors import UserError
from tinystories.llm.cache import JsonlCache
from tinystories.llm.judge import JudgeTemplate, parse_grades
from tinystories.llm.client import ChatClient

CATS = ["grammar", "creativity", "consistency", "plot"]


# ------------------------------------------------------------------ the server

class JudgeServer(LocalServer):
    """A chat-completions endpoint that grades deterministically and misbehaves on request.

    plan:        {request number (1-based): ("429", retry_after) | ("500",) | ("hang", seconds) | ("401",)}
    status:      answer every request with this HTTP status (e.g. 401)
    modes:       malformed-grade behaviour given to the first distinct completions seen, in order:
                 "always" (never readable) or "once" (readable after the format reminder)
    down_after:  after this many well-formed grade replies, hang on everything
    """

    def __init__(self, plan=None, status=None, modes=(), down_after=None):
        super().__init__(_Handler)
        self.plan, self.status, self.down_after = dict(plan or {}), status, down_after
        self.mode_queue = list(modes)
        self.modes: dict[str, str] = {}
        self.returned: dict[str, tuple[dict, str]] = {}   # completion -> (grades, age) as sent
        self.count = 0
        self.times: list[float] = []
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        self.start()


def grades_for(text: str) -> tuple[dict, str]:
    h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    return {c: float(1 + (h >> (8 * i)) % 10) for i, c in enumerate(CATS)}, "ABCDEF"[h % 6]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, obj, headers=()):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self):
        srv: JudgeServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.count += 1
            n = srv.count
            srv.times.append(time.monotonic())
            srv.auth.add(self.headers.get("Authorization", ""))
            down = srv.down_after is not None and len(srv.returned) >= srv.down_after
        action = ("hang", 1.0) if down else srv.plan.get(n)
        if srv.status:
            action = (str(srv.status),)
        if action:
            if action[0] == "hang":
                time.sleep(action[1])
                return self._send(200, {"choices": [{"message": {"role": "assistant", "content": "too late"}}]})
            if action[0] == "429":
                return self._send(429, {"error": {"message": "slow down"}}, [("Retry-After", str(action[1]))])
            code = int(action[0])
            return self._send(code, {"error": {"message": f"test error {code}"}})

        msgs = body["messages"]
        first = msgs[0]["content"]
        completion = first[first.index("<<<") + 3:first.rindex(">>>")]
        users = sum(m["role"] == "user" for m in msgs)
        with srv.lock:
            if completion not in srv.modes:
                srv.modes[completion] = srv.mode_queue.pop(0) if srv.mode_queue else "ok"
            mode = srv.modes[completion]
        if users == 1:
            text = f"The student's part is {len(completion)} characters long."
        elif mode == "always" or (mode == "once" and users == 2):
            text = "Grammar: good. Creativity: quite some. I would not give numbers."
        else:
            grades, age = grades_for(completion)
            parts = [f"{c.capitalize()}: {grades[c]:g}/10" for c in CATS]
            # two layouts, so the parser sees more than one
            text = (", ".join(parts) + f", Age group: {age}" if len(completion) % 2
                    else "\n".join(f"**{p.replace(': ', '**: ')}" for p in parts) + f"\n**Age group**: {age} (guess)")
            with srv.lock:
                srv.returned[completion] = (grades, age)
        self._send(200, {"id": f"c{n}", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}]})


@pytest.fixture
def server_factory():
    made = []

    def make(**kw):
        s = JudgeServer(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(client: ChatClient, text: str = "x") -> str:
    return client.complete([{"role": "user", "content": f"<<<{text}>>>"}])


# ------------------------------------------------------------------ the client

def test_client_retries_429_honouring_retry_after(server_factory):
    srv = server_factory(plan={1: ("429", 1)})
    client = ChatClient(srv.url, "m", timeout=2, max_retries=2, backoff=0.01)
    assert ask(client).startswith("The student's part")
    assert srv.count == 2 and client.requests_sent == 2
    assert srv.times[1] - srv.times[0] >= 0.95   # waited as told, not the 0.01 s backoff


def test_client_retries_500_and_timeout(server_factory):
    srv = server_factory(plan={1: ("500",), 2: ("hang", 1.5)})
    client = ChatClient(srv.url, "m", timeout=0.4, max_retries=3, backoff=0.01)
    t = time.monotonic()
    assert ask(client).startswith("The student's part")
    assert srv.count == 3
    assert time.monotonic() - t < 1.4             # gave up on the hang at the timeout


def test_client_401_fails_at_once_and_key_is_sent(server_factory, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    srv = server_factory(status=401)
    client = ChatClient(srv.url, "m", api_key_env="TEST_JUDGE_KEY", max_retries=5, backoff=0.01)
    with pytest.raises(UserError, match="HTTP 401: test error 401"):
        ask(client)
    assert srv.count == 1 and srv.auth == {"Bearer sk-test"}


def test_client_unreachable_is_a_user_error():
    client = ChatClient(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=2, backoff=0.01)
    with pytest.raises(UserError, match="failed after 3 tries .*cannot connect"):
        ask(client)


def test_client_map_limits_concurrency_and_keeps_order(server_factory):
    srv = server_factory()
    client = ChatClient(srv.url, "m", concurrency=3)
    inflight, peak, lock = [0], [0], threading.Lock()

    def job(i):
        with lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
        try:
            time.sleep(0.02)
            return ask(client, "x" * i)
        finally:
            with lock:
                inflight[0] -= 1

    got = dict(client.map(job, range(10)))
    assert sorted(got) == list(range(10)) and peak[0] == 3
    assert got[7] == "The student's part is 7 characters long."
    assert client.complete_many([[{"role": "user", "content": "<<<ab>>>"}], "<<<abc>>>"]) == \
        ["The student's part is 2 characters long.", "The student's part is 3 characters long."]


# ------------------------------------------------------------------ grade parsing and template

def test_parse_grades_variants():
    ages = JudgeTemplate.load().age_groups
    ok = parse_grades("Grammar: 8/10, Creativity: 7/10, Consistency: 6/10, Plot: 5/10, Age group: E (10-12)",
                      CATS, 10, ages)
    assert ok == ({"grammar": 8, "creativity": 7, "consistency": 6, "plot": 5}, "E")
    md = parse_grades("**Grammar**: 8.5 / 10\nCreativity - 3 out of 10\nConsistency with the beginning: 4/5\n"
                      "Plot: 2/10\n**Age group:** b", CATS, 10, ages)
    assert md == ({"grammar": 8.5, "creativity": 3, "consistency": 8, "plot": 2}, "B")
    # restated grades: the last explicit N/10 wins; an age given only as its range still counts
    assert parse_grades("Grammar is 3. Grammar: 9/10, Creativity: 1/10, Consistency: 1/10, Plot: 1/10. "
                        "Age group 13-16", CATS, 10, ages) == ({"grammar": 9, "creativity": 1, "consistency": 1,
                                                                "plot": 1}, "F")
    assert parse_grades("Grammar: 8/10, Creativity: 7/10, Consistency: 6/10, Age group: E", CATS, 10, ages) is None
    assert parse_grades("Grammar: 11/10, Creativity: 7/10, Consistency: 6/10, Plot: 5/10, Age group: E",
                        CATS, 10, ages) is None
    assert parse_grades("Grammar: 8/10, Creativity: 7/10, Consistency: 6/10, Plot: 5/10", CATS, 10, ages) is None


def test_packaged_template_renders_the_papers_layout():
    t = JudgeTemplate.load()
    assert t.categories == CATS and list(t.age_groups) == list("ABCDEF") and len(t.turns) == 2
    first = t.fill(t.turns[0], {"story": "There was a loud*** thunderclap."})
    assert "There was a loud*** thunderclap." in first and "{" not in first
    # the format the template asks for is one the parser reads
    assert parse_grades(t.turns[1].splitlines()[-1].replace("X", "7").replace(" L", " C"), CATS, 10,
                        t.age_groups) == ({c: 7 for c in CATS}, "C")


def test_cache_survives_a_torn_line(tmp_path):
    path = tmp_path / "c.jsonl"
    c = JsonlCache(path)
    c.put("a", {"x": 1})
    with open(path, "a") as f:
        f.write('{"key": "b", "val')             # killed mid-write
    c2 = JsonlCache(path)
    assert c2.get("a") == {"x": 1} and "b" not in c2
    c2.put("c", [1, 2])
    assert JsonlCache(path).get("c") == [1, 2]


# ------------------------------------------------------------------ GPT-Eval end to end

TEST_TEMPLATE = """\
name: test-judge
separator: "***"
categories: [grammar, creativity, consistency, plot]
age_groups: {A: 3 or under, B: 4-5, C: 6-7, D: 8-9, E: 10-12, F: 13-16}
turns:
  - "ASSESS {separator}\\n{beginning}***<<<{completion}>>>"
  - "GRADE"
format_reminder: "FORMAT PLEASE"
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer model with a 300-token BPE: grading does not care what it writes."""
    import torch

    from tinystories.model.config import ModelConfig
    from tinystories.model.gpt_neo import GPTNeo
    from tinystories.model.modeldir import save_model
    from tinystories.data.tokenizer import train_bpe

    stories = EVAL_PROMPTS.read_text().split("- |-")[1:]
    tok = train_bpe(stories, vocab_size=300)
    torch.manual_seed(0)
    model = GPTNeo(ModelConfig(vocab_size=tok.vocab_size, context=256, hidden=32, layers=2, heads=2, window=32))
    d = tmp_path_factory.mktemp("tiny") / "model"
    save_model(d, model, tok)
    return d


@pytest.fixture
def setup(tmp_path, tiny_model):
    prompts = yaml.safe_load(EVAL_PROMPTS.read_text())[:2]
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(prompts))
    (tmp_path / "judge.yaml").write_text(TEST_TEMPLATE)
    return tmp_path


def config(tmp_path, model, url, **kw):
    from tinystories.evaluate.gpt_eval import GptEvalConfig

    base = dict(judge_url=url, prompts=str(tmp_path / "prompts.yaml"), template=str(tmp_path / "judge.yaml"),
                samples=3, max_new_tokens=12, concurrency=3, timeout=0.5, max_retries=3, backoff=0.01,
                parse_retries=1, cache=str(tmp_path / "cache.jsonl"), out=str(tmp_path / "out"), device="cpu")
    base.update(kw)
    return GptEvalConfig(str(model), "judge-test", **base)


def test_gpt_eval_end_to_end_report_equals_what_the_judge_said(setup, tiny_model, server_factory):
    from tinystories.evaluate.gpt_eval import gpt_eval

    srv = server_factory(plan={1: ("429", 0), 3: ("500",), 5: ("hang", 1.2)}, modes=["always", "once"])
    r = gpt_eval(config(setup, tiny_model, srv.url))

    comps = [c for p in r["prompts"] for c in p["completions"]]
    assert len(r["prompts"]) == 2 and len(comps) == 6 and r["judged"] == 6
    assert r["unparseable"] == 1 and r["graded"] == 5
    for c in comps:
        if c["ok"]:
            grades, age = srv.returned[c["text"]]
            assert c["grades"] == grades and c["age_group"] == age
            assert c["assessment"] == f"The student's part is {len(c['text'])} characters long."
        else:
            assert srv.modes[c["text"]] == "always" and len(c["replies"]) == 3   # assessment + 2 tries
    ok = [srv.returned[c["text"]] for c in comps if c["ok"]]
    for cat in CATS:
        s = r["summary"][cat]
        assert s["mean"] == pytest.approx(sum(g[cat] for g, _ in ok) / 5, abs=1e-12) and s["n"] == 5
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    assert r["age_groups"] == {g: sum(a == g for _, a in ok) for g in "ABCDEF"}
    # 6 conversations x 2 turns, + 2 format reminders (once, always), + 1 retry each for 429/500/hang
    assert srv.count == r["requests"]["sent"] == 12 + 2 + 3
    md = (setup / "out" / "gpt_eval.md").read_text()
    assert f"| grammar | {r['summary']['grammar']['mean']:.2f} |" in md and "unparseable" in md
    assert json.loads((setup / "out" / "gpt_eval.json").read_text())["summary"] == r["summary"]

    # resume: everything is cached, so a second run sends nothing and reports the same numbers
    r2 = gpt_eval(config(setup, tiny_model, srv.url))
    assert srv.count == 17 and r2["requests"] == {"sent": 0, "judgments_from_cache": 6, "judgments_new": 0}
    assert r2["summary"] == r["summary"]


def test_gpt_eval_judge_dying_mid_run_loses_nothing(setup, tiny_model, server_factory):
    from tinystories.evaluate.gpt_eval import gpt_eval

    dying = server_factory(down_after=2)
    with pytest.raises(UserError, match="judge at .* failed after 2 tries .*no reply within"):
        gpt_eval(config(setup, tiny_model, dying.url, concurrency=1, max_retries=1, timeout=0.3))
    assert len(dying.returned) == 2

    healthy = server_factory()
    r = gpt_eval(config(setup, tiny_model, healthy.url, concurrency=1))
    assert r["requests"]["judgments_from_cache"] == 2 and r["requests"]["judgments_new"] == 4
    assert healthy.count == 4 * 2 and r["graded"] == 6
    graded_by_first = {c["text"] for p in r["prompts"] for c in p["completions"]} & set(dying.returned)
    assert len(graded_by_first) == 2


def test_eval_prompts_from_the_hub_cache(tmp_path):
    """The download code, run on a hub cache laid out as huggingface_hub lays it out (no network here)."""
    from tinystories.evaluate.gpt_eval import HUB_PROMPTS, load_prompts

    commit = "0" * 40
    repo = tmp_path / "datasets--roneneldan--TinyStories"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / HUB_PROMPTS).write_bytes(EVAL_PROMPTS.read_bytes())
    prompts = load_prompts(None, cache_dir=tmp_path)
    assert len(prompts) == 44 and prompts[0].startswith("Once upon a time, there lived a bunny")


# ------------------------------------------------------------------ one-line errors from the CLI

def cli_gpt_eval(model, tmp_path, url, *extra, env=None):
    return run_cli("evaluate", "gpt-eval", model, "--judge-url", url, "--judge-model", "judge-test",
                   "--samples", "3", "--max-new-tokens", "12", "--device", "cpu", "--cache",
                   tmp_path / "cache.jsonl", "--out", tmp_path / "out", *extra, env=env, timeout=120)


def test_cli_one_line_errors(setup, tiny_model, server_factory):
    prompts = ["--prompts", setup / "prompts.yaml"]
    srv = server_factory(status=401)
    assert_one_line_error(cli_gpt_eval(tiny_model, setup, srv.url, *prompts), "judge", "HTTP 401")
    assert 1 <= srv.count <= 6          # no retries: at most the conversations already started

    dead = f"http://127.0.0.1:{free_port()}/v1"
    assert_one_line_error(cli_gpt_eval(tiny_model, setup, dead, *prompts, "--retries", "1"),
                          "failed after 2 tries", "cannot connect")

    (setup / "empty.yaml").write_text("[]\n")
    assert_one_line_error(cli_gpt_eval(tiny_model, setup, dead, "--prompts", setup / "empty.yaml"),
                          "empty.yaml", "no prompts")

    (setup / "notamodel").mkdir()
    assert_one_line_error(cli_gpt_eval(setup / "notamodel", setup, dead, *prompts), "not a model directory")

    # no --prompts and no hub: says so in one line, fast
    env = {"HF_HUB_CACHE": str(setup / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    t = time.monotonic()
    assert_one_line_error(cli_gpt_eval(tiny_model, setup, dead, env=env), "Hugging Face hub", "--prompts FILE")
    assert time.monotonic() - t < 20
