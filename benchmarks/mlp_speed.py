"""Training speed of the budget recipe's model with each MLP: SwiGLU (Llama's), ReLU² and GELU (Arcee's).

    python benchmarks/mlp_speed.py                    # 128 x 4, the model the 10- and 30-minute picks train
    python benchmarks/mlp_speed.py --hidden 96 192 --rounds 5

For each shape it builds the budget recipe's model (rope + RMSNorm, heads of 32, vocabulary 4096, context 256,
batch 8) once per MLP, with the optimizer `train --max-time` uses (Muon + AdamW), and times training steps
(forward, backward, optimizer) on random tokens, the MLPs interleaved round by round so that a change in the
machine's speed falls on all of them. It prints the median tokens/s, the spread over rounds and the ratio to
SwiGLU. The ablation measured ReLU² 10% faster than SwiGLU on a Zen 4 in bf16 (10-minute runs); this says
what it is on the machine at hand, in seconds, without a run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from budget_sweep import MUON, Spec, lr_prior, machine  # noqa: E402

MLPS = ("swiglu", "relu2", "gelu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per MLP per round")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)

    import torch

    from tinystories.model.gpt_neo import GPTNeo
    from tinystories.train.config import TrainConfig
    from tinystories.train.optim import make_optimizer

    batch, context, vocab = 8, 256, 4096
    print(f"machine: {machine()}; fp32, batch {batch} x {context}, vocabulary {vocab}, Muon + AdamW, "
          f"{args.rounds} rounds of {args.steps} steps, interleaved\n")
    print("| shape | MLP | tokens/s (median) | spread over rounds | vs SwiGLU |")
    print("|---|---|---|---|---|")
    for hidden in args.hidden:
        runs = {}
        for mlp in MLPS:
            torch.manual_seed(0)
            # the model the sweep and `train --max-time` build for this shape (budget_sweep.Spec)
            spec = Spec(hidden, args.layers, 32, lr_prior(hidden, "muon"), batch_size=batch, context=context,
                        vocab=vocab, mlp=mlp, **MUON)
            model = GPTNeo(spec.model_config()).train()
            opt = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3), torch.device("cpu"))
            runs[mlp] = (model, opt, torch.randint(0, vocab, (batch, context + 1)))

        def steps(mlp: str, n: int) -> float:
            model, opt, ids = runs[mlp]
            t = time.perf_counter()
            for _ in range(n):
                model(ids[:, :-1], ids[:, 1:]).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return batch * context * n / (time.perf_counter() - t)

        for mlp in MLPS:
            steps(mlp, 3)  # warm up: allocator, kernels, the optimizer's state
        speeds = {mlp: [] for mlp in MLPS}
        for _ in range(args.rounds):
            for mlp in MLPS:
                speeds[mlp].append(steps(mlp, args.steps))
        base = statistics.median(speeds["swiglu"])
        for mlp in MLPS:
            med = statistics.median(speeds[mlp])
            print(f"| {hidden} x {args.layers} | {mlp} | {med:,.0f} | {min(speeds[mlp]):,.0f}-{max(speeds[mlp]):,.0f} | "
                  f"{med / base:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
