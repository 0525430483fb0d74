"""The fused CPU attention kernel alone, next to PyTorch's SDPA on the same numbers, in one run.

    python benchmarks/attention.py            # batch 8 x 512, 16 heads of 16 (8M) and of 48 (33M)
    python benchmarks/attention.py --reps 9 --dtype fp32

For each head size and window (global, and GPT-Neo's local 256), the forward and the backward of
`tinystories::attention_fwd` / `attention_bwd` (what training calls), and SDPA with the same causal
mask (forward, then backward through autograd), interleaved so that a busy machine slows both alike;
milliseconds are medians. GFLOP/s counts the QK and PV products over the keys each query sees (2x that
for the backward), the convention of run.py's MFU. The kernel's gradient is checked against SDPA's
before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tinystories.kernels import cpu as kernels

SHAPES = [("8M", 16, 16, 0), ("8M local", 16, 16, 256), ("33M", 16, 48, 0), ("33M local", 16, 48, 256)]
B, T = 8, 512


def _sdpa(qkv: torch.Tensor, heads: int, window: int, scale: float) -> torch.Tensor:
    q, k, v = qkv.view(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & ((j > i - window) if window else True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(1, 2).reshape(B, T, -1)


def _time(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = ap.parse_args(argv)
    if not kernels.attention_available():
        sys.exit("attention.py: the C kernels are unavailable here (no C compiler?)")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"batch {B} x {T}, {args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"ms a layer (median of {args.reps})\n")
    print("| shape | heads x size | window | ours fwd | ours bwd | SDPA fwd | SDPA bwd | ours GFLOP/s fwd / bwd "
          "| SDPA / ours (fwd + bwd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, H, D, window in SHAPES:
        g = torch.Generator().manual_seed(0)
        qkv = torch.randn(B, T, 3 * H * D, generator=g).to(dtype)
        dy = torch.randn(B, T, H * D, generator=g).to(dtype)
        scale = D ** -0.5
        y, lse = kernels.attention_fwd(qkv, H, window, scale)
        dq = kernels.attention_bwd(qkv, y, dy, lse, H, window, scale)
        ref_in = qkv.float().requires_grad_()
        (ref,) = torch.autograd.grad(_sdpa(ref_in, H, window, scale), ref_in, dy.float())
        err = (dq.float() - ref).abs().max().item() / max(1.0, ref.abs().max().item())
        assert err < (5e-2 if dtype == torch.bfloat16 else 1e-4), f"{name}: the kernel's gradient is off by {err}"
        times = {k: [] for k in ("fwd", "bwd", "sfwd", "sbwd")}
        for _ in range(args.reps):
            times["fwd"].append(_time(lambda: kernels.attention_fwd(qkv, H, window, scale)))
            times["bwd"].append(_time(lambda: kernels.attention_bwd(qkv, y, dy, lse, H, window, scale)))
            x = qkv.detach().requires_grad_()
            t = time.perf_counter()
            out = _sdpa(x, H, window, scale)
            times["sfwd"].append(time.perf_counter() - t)
            times["sbwd"].append(_time(lambda: out.backward(dy)))
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        keys = sum(min(i + 1, window) if window else i + 1 for i in range(T))
        flops = 4 * B * H * D * keys
        print(f"| {name} | {H} x {D} | {window or 'all'} | {ms['fwd']:.1f} | {ms['bwd']:.1f} | {ms['sfwd']:.1f} | "
              f"{ms['sbwd']:.1f} | {flops / ms['fwd'] / 1e6:.0f} / {2 * flops / ms['bwd'] / 1e6:.0f} | "
              f"{(ms['sfwd'] + ms['sbwd']) / (ms['fwd'] + ms['bwd']):.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
