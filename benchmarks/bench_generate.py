"""Single-prompt greedy decoding speed: ours vs transformers' generate, same weights, same run.

    python benchmarks/bench_generate.py [--shapes 1M 8M 33M] [--new-tokens 128] [--repeats 5] [--threads N]

For each shape (vocab 10K, context 512, random weights seeded alike) it builds our GPTNeo,
copies its weights into transformers' GPTNeoForCausalLM through `tinystories.hf`, and times
generating `--new-tokens` tokens after a short prompt, interleaving the contenders so that
a busy machine slows them alike. It checks that every contender produced the same tokens.

Contenders: transformers' generate (do_sample=False); ours decoding one token per pass
(lookup=0); ours as `generate` runs by default (drafts from the text checked in one pass,
the same output). tokens/s is the median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tinystories.config import parameter_counts, preset_config  # noqa: E402
from tinystories.generate import generate  # noqa: E402
from tinystories.hf import to_hf_config, to_hf_state  # noqa: E402
from tinystories.model import GPTNeo  # noqa: E402
from tinystories.tokenizer import train_bpe  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
PROMPT = "Once upon a time, there was a little girl named Lily. She"


def build(shape: str, seed: int = 0):
    import transformers

    cfg = preset_config(shape)  # the paper's vocab 10K, context 512
    torch.manual_seed(seed)
    ours = GPTNeo(cfg).eval()
    hc = to_hf_config(cfg)
    for k in ("architectures", "model_type", "torch_dtype"):
        hc.pop(k)
    hc.update(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(**hc)).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state(ours), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    return cfg, ours, hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1M", "8M", "33M"])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    texts = (SHARED / "TinyStories-train-head.txt").read_text(encoding="utf-8").split("<|endoftext|>")
    tok = train_bpe(texts[:2000], 10_000)  # any tokenizer fits: the weights are random
    assert tok.eot_id == 0
    n = args.new_tokens

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); greedy, {n} new tokens, "
          f"prompt of {len(tok.encode(PROMPT)) + 1} tokens; median of {args.repeats}")
    rows = []
    for shape in args.shapes:
        cfg, ours, hf = build(shape)
        ids = torch.tensor([[tok.eot_id] + tok.encode(PROMPT)])

        def run_hf():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                              num_beams=1, pad_token_id=0)
            new = out[0, ids.size(1):].tolist()
            return new[:new.index(0)] if 0 in new else new

        def run_ours(lookup):
            return lambda: generate(ours, tok, [PROMPT], max_new_tokens=n, temperature=0, lookup=lookup)[0][0].tokens

        contenders = {"transformers": run_hf, "ours, 1 token/pass": run_ours(0), "ours (default)": run_ours(8)}
        times = {k: [] for k in contenders}
        outputs = {}
        with torch.inference_mode():
            for name, f in contenders.items():  # warm up (first calls allocate and pick kernels)
                outputs[name] = f()
            for _ in range(args.repeats):
                for name, f in contenders.items():
                    t = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - t)
        same = all(o == outputs["transformers"] for o in outputs.values())
        tokens = len(outputs["transformers"])
        speed = {k: tokens / statistics.median(v) for k, v in times.items()}
        rows.append((shape, parameter_counts(cfg)["total"], speed, same, tokens))

    names = list(rows[0][2])
    head = f"{'shape':<6} {'params':>7} " + " ".join(f"{k + ' tok/s':>26}" for k in names) + "  same tokens"
    print(head)
    print("-" * len(head))
    for shape, params, speed, same, tokens in rows:
        cells = []
        for k in names:
            ratio = speed[k] / speed["transformers"]
            cells.append(f"{speed[k]:>15.0f} ({ratio:>4.2f}x)" if k != "transformers" else f"{speed[k]:>15.0f}        ")
        print(f"{shape:<6} {params / 1e6:>6.2f}M " + " ".join(f"{c:>26}" for c in cells)
              + f"  {'yes' if same else 'NO'} ({tokens})")


if __name__ == "__main__":
    main()
