"""Muon's Newton-Schulz iteration in bf16 (torch's) and in fp32 (ours on CPUs without bf16), per training step.

    python benchmarks/muon_ns.py            # the budget table's shapes: 96, 128, 192 and 256 x 4
    python benchmarks/muon_ns.py --hidden 256 --layers 8

For each shape it builds the budget recipe's model (rope + RMSNorm + SwiGLU, heads of 32, vocabulary 4096),
takes every matrix Muon updates, and times one optimizer step's worth of the iteration on random gradients
with torch.optim.Muon's own function (bf16) and with `train/optim.newton_schulz` in fp32, interleaved. It
prints ms per step and the ratio. `train/optim.newton_schulz_dtype` takes fp32 only where the CPU lacks bf16
instructions; on a CPU with them this table says whether fp32 would be faster there too.
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

from budget_sweep import machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="+", default=[96, 128, 192, 256])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import torch
    from torch.optim import _muon  # torch's Muon: its iteration (what Muon.step calls) and its defaults

    from tinystories.model.config import ModelConfig
    from tinystories.model.gpt_neo import GPTNeo
    from tinystories.runtime.device import cpu_has_bf16, physical_cores
    from tinystories.train.optim import is_hidden_matrix, newton_schulz

    torch.set_num_threads(physical_cores())
    coeffs, steps, eps = (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C), _muon.DEFAULT_NS_STEPS, _muon.EPS
    ways = {"torch bf16": lambda g: _muon._zeropower_via_newtonschulz(g, coeffs, steps, eps),
            "ours fp32": lambda g: newton_schulz(g, coeffs, steps, eps, torch.float32)}
    print(f"{machine()}; bf16 instructions: {'yes' if cpu_has_bf16() else 'no'}")
    print("\n| shape | matrices | torch bf16, ms/step | ours fp32, ms/step | bf16 / fp32 |\n|---|---|---|---|---|")
    for hidden in args.hidden:
        cfg = ModelConfig(vocab_size=4096, context=256, hidden=hidden, layers=args.layers, heads=hidden // 32,
                          position="rope", norm="rmsnorm", mlp="swiglu")
        grads = [torch.randn_like(p) for n, p in GPTNeo(cfg).named_parameters() if is_hidden_matrix(n, p)]
        times: dict[str, list[float]] = {k: [] for k in ways}
        for f in ways.values():  # warm up (allocations, library kernel choice)
            f(grads[0])
        for _ in range(args.repeats):
            for name, f in ways.items():
                t0 = time.perf_counter()
                for g in grads:
                    f(g)
                times[name].append(time.perf_counter() - t0)
        bf16, fp32 = (statistics.median(times[k]) * 1e3 for k in ways)
        print(f"| {hidden} x {args.layers} | {len(grads)} | {bf16:.1f} | {fp32:.1f} | {bf16 / fp32:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
