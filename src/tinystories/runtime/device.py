"""The machine: devices, cores, and the precision that pays on them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..errors import UserError

# ---------------------------------------------------------------- devices

def resolve_device(name: str = "auto"):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> torch.device, or a UserError if it is not there."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError("--device mps: Apple MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    raise UserError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps")


# ===================================================================== hardware

def physical_cores() -> int:
    """Cores this process may run on, counting hyperthread siblings once (they slow matmuls down)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast is a speed-up here: native on recent GPUs; on a CPU, measured.

    CPUs without bf16 instructions (no AVX-512 BF16 / AMX) emulate it tens of times slower than fp32,
    so a quick matmul probe decides rather than a feature list.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    a32, b32 = torch.randn(256, 512), torch.randn(512, 256)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def best(a, b):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times[1:])

    return best(a16, b16) < 0.8 * best(a32, b32)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if bf16_pays(device) else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError(f"precision fp16 needs a CUDA GPU (it needs loss scaling); on {device.type} use bf16 or fp32")
    return name


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


