"""A `synth` run against a local stand-in for an LLM, and the same diversity numbers for real TinyStories.

No real LLM is reachable from our machines, so the server here stands in for one: for each prompt it takes a real
story from the shared TinyStories-subset-valid.txt (in order) and puts one sentence using the three asked words
after its first sentence; 3% of replies are refusals and 2% are 429s. It measures the pipeline (gates, records,
report, throughput of the client and the runner), not what an LLM would write.

    python benchmarks/synth_demo.py [--n 300] [--out /tmp/synth_demo/stories.jsonl]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tinystories.data.instruct.words import split_sentences
from tinystories.data.sources import iter_stories
from tinystories.data.synth.report import CorpusStats, markdown
from tinystories.data.synth.runner import SynthConfig, run
from tinystories.data.synth.vocab import load_vocabulary
from tinystories.evaluate.diversity import diversity_metrics
from tinystories.llm.config import LLMConfig

SHARED = REPO.parent / "shared" / "data" / "tinystories"
_ASKED = re.compile(r'verb "([^"]+)", the noun "([^"]+)" and the adjective "([^"]+)"')


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stories = itertools.cycle(s for s in iter_stories(SHARED / "TinyStories-subset-valid.txt")
                                       if len(split_sentences(s)) > 3)
        self.rng = random.Random(0)
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        srv: StandIn = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with srv.lock:
            story, roll = next(srv.stories), srv.rng.random()
        if roll < 0.02:
            return self._send(429, {"error": {"message": "slow down"}}, [("Retry-After", "0.05")])
        if roll < 0.05:
            text = "I'm sorry, but I can't help with that."
        elif prompt.startswith("Summarize"):
            text = split_sentences(prompt.split("Story:", 1)[1])[0]
        else:
            verb, noun, adj = _ASKED.search(prompt).groups()
            first, *rest = split_sentences(story)
            text = " ".join([first, f"One day they wanted to {verb} the {adj} {noun}.", *rest])
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                         "usage": usage})

    def _send(self, code, obj, headers=()):
        data = json.dumps(obj).encode()
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", default="/tmp/synth_demo/stories.jsonl")
    args = ap.parse_args()
    srv = StandIn()
    sim = lambda stories: diversity_metrics(stories, [])["r"]
    cfg = SynthConfig(out=args.out, n=args.n, model="stand-in", seed=0, force=True, instruct=True,
                      llm=LLMConfig(url=f"http://127.0.0.1:{srv.server_address[1]}/v1", concurrency=8))
    t = time.perf_counter()
    report = run(cfg, similarity=sim)
    dt = time.perf_counter() - t
    print(markdown(report))
    print(f"{report['kept']} stories in {dt:.1f} s: {report['kept'] / dt:.1f} stories/s "
          f"({report['this_run']['requests']} requests)\n")
    vocab = load_vocabulary()
    real = list(itertools.islice(iter_stories(SHARED / "TinyStories-train-head.txt"), args.n))
    stats = CorpusStats(vocab, sample=200, seed=0)
    for story in real:
        stats.add({"story": story})
    d = stats.diversity(sim)
    r = d["rouge2_self_similarity"]
    print(f"real TinyStories (first {len(real)} of TinyStories-train-head.txt): \"Once upon a time\" "
          f"{d['once_upon_a_time_share']:.1%}; max Rouge-2 F to another story mean {r['mean']:.3f}, max "
          f"{r['max']:.3f}, above 0.5 {r['share_above_0.5']:.1%} ({r['stories']} stories); vocabulary words used "
          f"{d['used_distinct']} ({d['used_share']:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
