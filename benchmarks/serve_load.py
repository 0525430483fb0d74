"""Load test of `tinystories serve`: aggregate tokens/s and time to first token at 1, 4, 16 and 64
concurrent clients, against the same requests served one at a time, in one run.

    python benchmarks/serve_load.py                      # the shipped model
    python benchmarks/serve_load.py runs/8M --requests 64 --levels 1,4,16,64

Starts `tinystories serve MODEL --port 0` in a subprocess, then for each level sends the same
`--requests` streaming completions (story starts from the paper's evaluation prompts, temperature
0.8, seed = request number, max_tokens 64/128/192 in turn, ignore_eos so that every level does the
same work), `level` at a time: a client sends its next request when its last one ends. Level 1 is
the one-at-a-time baseline. Prints a table and appends one JSON line per run to
benchmarks/results/serve_load.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
STARTS = ["Once upon a time, there was a little girl named Lily. She", "Tom and his dog went to the park. They",
          "The sun was shining and the birds were singing. A little bunny", "Sara had a red ball. One day,",
          "In a small house lived an old cat. The cat", "Ben wanted to fly like a bird, so he"]


def start_server(model: str | None, threads: int | None, max_batch: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "tinystories", "serve", *([model] if model else []), "--port", "0",
           "--model-name", "bench", "--max-batch", str(max_batch), "--max-queue", "1024"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        sys.exit(f"serve_load: the server did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


async def one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int]:
    """(seconds to the first token, tokens) of one streaming request."""
    t0, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
    return first if first is not None else float("nan"), tokens


async def run_level(url: str, bodies: list[dict], level: int) -> dict:
    todo = list(enumerate(bodies))
    ttft: list[float] = []
    tokens = 0
    limits = httpx.Limits(max_connections=level + 4, max_keepalive_connections=level + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker():
            nonlocal tokens
            while todo:
                _, body = todo.pop(0)
                t, n = await one(client, url, body)
                ttft.append(t)
                tokens += n

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(level)))
        wall = time.perf_counter() - t0
    return {"clients": level, "requests": len(bodies), "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "ttft_p50_s": round(statistics.median(ttft), 3),
            "ttft_p95_s": round(statistics.quantiles(ttft, n=20)[-1], 3) if len(ttft) > 1 else round(ttft[0], 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None, help="MODEL_DIR (default: the shipped model)")
    ap.add_argument("--requests", type=int, default=64, help="requests per level (default 64)")
    ap.add_argument("--levels", default="1,4,16,64", help="concurrent clients (default 1,4,16,64)")
    ap.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_load.jsonl"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    lengths = [64, 128, 192]
    bodies = [{"model": "bench", "prompt": STARTS[i % len(STARTS)], "max_tokens": lengths[i % 3], "stream": True,
               "temperature": 0.8, "seed": i, "ignore_eos": True,
               "stream_options": {"include_usage": True}} for i in range(args.requests)]
    proc, url = start_server(args.model, args.threads, max(levels))
    try:
        asyncio.run(run_level(url, bodies[:4], 4))  # warm-up
        load = os.getloadavg()[0]
        rows = []
        for level in levels:
            rows.append(asyncio.run(run_level(url, bodies, level)))
            r = rows[-1]
            print(f"{level:>3} clients: {r['tokens']:>6} tokens in {r['seconds']:>7.2f} s = {r['tokens_per_s']:>7.1f} "
                  f"tokens/s ({r['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x one at a time), time to first "
                  f"token p50 {r['ttft_p50_s'] * 1000:.0f} ms, p95 {r['ttft_p95_s'] * 1000:.0f} ms", flush=True)
        load = max(load, os.getloadavg()[0])
    finally:
        proc.terminate()
        proc.wait(60)
    record = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model or "shipped",
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
              "load_avg_1m": round(load, 2), "levels": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(f"load average {load:.1f} on {os.cpu_count()} cores; appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
