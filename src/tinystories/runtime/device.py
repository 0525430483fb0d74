"""The machine: devices, cores, and the precision that pays on them."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, not here: every verb imports this module, and its one-line errors for
# a bad path or option come before any model work. Importing torch first made each of them take 2.2 s.

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


_KEEPING = False


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory that training frees, for the next step to reuse. By default it
    returns the top of its heap to the kernel once more than twice its (dynamic) mmap threshold lies free
    there, and a training step frees most of its activations at once, so each step got them back as new
    pages: 240 MiB a step of minor page faults, each page zeroed by the kernel, on the 8M preset at batch
    8 x 512 in bf16. A fixed 32 MiB threshold (glibc's largest: bigger blocks still come from mmap) and a
    2 GiB trim threshold leave about 1 MiB a step, and that step ran 13-16% faster (Zen 5, README). The
    process then keeps its peak memory until it exits, as a training run does anyway. Process-wide,
    once; False where the C library has no mallopt (not glibc) or refuses."""
    global _KEEPING
    if _KEEPING:
        return True
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    _KEEPING = mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20) == 1 and mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    return _KEEPING


def cache_root() -> Path:
    """~/.cache/tinystories (or $TINYSTORIES_CACHE, or under $XDG_CACHE_HOME): per-machine caches."""
    env = os.environ.get("TINYSTORIES_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinystories"


def cache_key(what: dict) -> str:
    """The key a per-machine cache (precision, decoding dtype, probe history) files `what` under: its hash."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def read_cache(path: Path) -> dict:
    """A per-machine cache file's entries; {} when it is absent or torn by hand (measure again)."""
    import json

    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cpu_fingerprint() -> str:
    """The CPU's model and feature flags: what a native build or a speed measurement depends on."""
    text = platform.machine() + platform.system()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                text += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        text += platform.processor()
    return text


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic (x86 AVX-512 BF16 or AMX, Arm BF16). Without it torch
    emulates bf16 tens of times slower than fp32, so there is nothing worth measuring."""
    words = set(cpu_fingerprint().replace(":", " ").split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision for `name` without a model to measure: explicit names are checked; 'auto' is
    bf16 on a GPU that has it (fp16 otherwise) and on a CPU with bf16 instructions, else fp32.
    Training decides 'auto' on a CPU by timing its own model (train/precision.py)."""
    if name == "auto":
        if device.type == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError(f"precision fp16 needs a CUDA GPU (it needs loss scaling); on {device.type} use bf16 or fp32")
    return name


def __getattr__(name: str):
    """AUTOCAST, the autocast dtype of each precision, built on first use (it needs torch)."""
    if name == "AUTOCAST":
        import torch

        globals()["AUTOCAST"] = table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
        return table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


