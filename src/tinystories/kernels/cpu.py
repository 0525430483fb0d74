"""CPU speed-ups that stay exact: a fused attention kernel for small heads, and a chunked
lm_head + cross-entropy.

Attention. GPT-Neo's small shapes have 16 heads of 4 or 16 numbers. A score costs a handful
of multiply-adds and one exp, so library kernels (SDPA's flash-for-CPU) spend their time on
tiny matrix products and on moving scores through memory. `csrc/kernels.c` keeps each
query row's scores in L1, never touches masked keys (a local layer reads only its window),
and recomputes probabilities in the backward pass from the saved log-sum-exp. It is built
once per machine with the system C compiler (about a second; cached under
~/.cache/tinystories/kernels) and runs on torch's own OpenMP threads. Without a compiler,
or with TINYSTORIES_KERNELS=0, everything falls back to SDPA: same math, slower. The kernels
take fp32 or bf16 activations (bf16 autocast) and always sum in fp32.

The boundary. The attention pair are `torch.library` custom ops (tinystories::attention_fwd/_bwd)
whose Python bodies check every tensor's device, dtype, shape and layout and derive the sizes
they pass to C from those shapes; a wrong call raises ValueError. Compiling the same C as a
torch.utils.cpp_extension costs 137 s on this 2-core Zen 4 (load 14) against 8 s for plain gcc
(about 1 s on an idle machine), so the library stays a plain shared object loaded with ctypes.

Cross-entropy. The logits of a batch (8 x 512 tokens x 10K vocabulary, fp32) are 164 MB that
log-softmax reads and writes several times. `lm_head_loss` computes the loss and its
gradient a slice of rows at a time, while the slice is in cache, with the same three matrix
products as the plain path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..runtime.device import cache_root, cpu_fingerprint

# Heads up to this size use the kernel on a CPU. Measured against SDPA (fwd+bwd, batch 8 x 512,
# 16 heads, 2 AVX2 cores): head size 4 is 4-6x faster, 16 1.6-1.9x, 48 1.3-1.5x, 96 1.3x.
MAX_HEAD_DIM = 128
_SOURCE = Path(__file__).with_name("csrc") / "kernels.c"
_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
          "-ffp-contract=fast", "-fPIC"]
_lib = None
_lib_tried = False
_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get("TINYSTORIES_KERNELS", "1") != "0"


def _cache_dir() -> Path:
    return cache_root() / "kernels"


def _compile(out: Path) -> bool:
    """Build the kernel library at `out`: with OpenMP if the compiler has it, native ISA if it can."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        obj, lib = Path(tmp) / "attention.o", Path(tmp) / out.name
        for arch in (["-march=native"], ["-mcpu=native"], []):
            for omp in (["-fopenmp"], []):
                # Compile with OpenMP but link without a runtime: GOMP_* then resolve to the
                # runtime torch has loaded (libgomp, or libomp's GOMP_* entry points).
                r = subprocess.run([cc, *_FLAGS, *arch, *omp, "-c", str(_SOURCE), "-o", str(obj)],
                                   capture_output=True)
                if r.returncode == 0 and subprocess.run(
                        [cc, "-shared", str(obj), "-o", str(lib), "-lm"], capture_output=True).returncode == 0:
                    os.replace(lib, out)
                    return True
    return False


def _load():
    global _lib, _lib_tried
    if _lib_tried:
        return _lib
    with _lock:
        if _lib_tried:
            return _lib
        try:
            key = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_FLAGS).encode() + cpu_fingerprint().encode())
            path = _cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
            if path.is_file() or _compile(path):
                lib = ctypes.CDLL(str(path))
                P, I, Fl = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
                lib.attention_forward.argtypes = [P, P, P, I, I, I, I, I, Fl, I, I]
                lib.attention_backward.argtypes = [P, P, P, P, P, I, I, I, I, I, Fl, I, I]
                lib.skinny_linear.argtypes = [P, I, P, P, P, I, I, I, I, I]
                lib.skinny_linear_i8.argtypes = [P, I, P, P, P, P, I, I, I, I, I]
                lib.skinny_linear_bf16.argtypes = [P, I, P, P, P, I, I, I, I, I]
                lib.decode_block.argtypes = [P, I, I, I, I, I, ctypes.POINTER(_Block), P, P, I, I, I, Fl, P, Fl, P, I]
                lib.softmax_xent.argtypes = [P, P, P, I, I, Fl, P, I, I, I]
                lib.decode_block_work.argtypes = [I, I, I, I, I]
                lib.gelu_forward.argtypes = [P, P, ctypes.c_long, I, I]
                lib.gelu_backward.argtypes = [P, P, P, ctypes.c_long, I, I]
                lib.decode_block_work.restype = ctypes.c_long
                _lib = lib
        except (OSError, subprocess.SubprocessError) as e:  # no compiler, no OpenMP runtime, read-only home...
            print(f"tinystories: fused CPU attention unavailable ({e}); using SDPA", file=sys.stderr)
        _lib_tried = True
    return _lib


def attention_available() -> bool:
    return enabled() and _load() is not None


def use_attention_kernel(x: torch.Tensor, head_dim: int, dropout: float) -> bool:
    """Whether `fused_attention` should run for activations `x`: a CPU training/eval pass in fp32, or in
    bf16 (bf16 autocast, or a bf16 model); the kernel reads and writes bf16 and sums in fp32."""
    return (x.device.type == "cpu" and x.dtype in _ATTENTION_DTYPES and head_dim <= MAX_HEAD_DIM
            and dropout == 0.0 and _autocast_ok() and attention_available())


_ATTENTION_DTYPES = (torch.float32, torch.bfloat16)


def _autocast_ok() -> bool:
    return not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") == torch.bfloat16


# ---- the checked boundary. Every C entry point is called from exactly one function below, which
# derives each size it passes from the tensors' own shapes after checking them, so a caller cannot
# hand C a wrong size, dtype, layout or argument order; a mistake raises ValueError instead of
# reading or writing past a buffer. The attention pair is registered as torch.library custom ops,
# so torch.compile and autograd see typed operators, with fake (meta) implementations for tracing.

def _check(name: str, t: torch.Tensor, shape: tuple, dtypes: tuple) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got one on {t.device}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor")


def _attention_dims(qkv: torch.Tensor, heads: int, window: int) -> tuple[int, int, int, int]:
    if qkv.dim() != 3 or qkv.size(2) % 3 or heads < 1 or (qkv.size(2) // 3) % heads:
        raise ValueError(f"attention: qkv must be [B, T, 3 * heads * head_dim]; got {tuple(qkv.shape)}, heads {heads}")
    if window < 0:
        raise ValueError(f"attention: window must be >= 0 (0 = global), got {window}")
    B, T, C3 = qkv.shape
    D = C3 // 3 // heads
    if D > MAX_HEAD_DIM or B * heads >= 2 ** 24 or T >= 2 ** 24:  # C indexes heads and rows with int
        raise ValueError(f"attention: shape {tuple(qkv.shape)} with {heads} heads is beyond the kernel's limits")
    return B, T, C3 // 3, D


@torch.library.custom_op("tinystories::attention_fwd", mutates_args=(), device_types="cpu")
def attention_fwd(qkv: torch.Tensor, heads: int, window: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, T, C] in qkv's dtype, lse [B, heads, T] fp32) of causal attention; see fused_attention."""
    B, T, C, D = _attention_dims(qkv, heads, window)
    _check("attention qkv", qkv, (B, T, 3 * C), _ATTENTION_DTYPES)
    if _load() is None:
        raise RuntimeError("fused attention: the C kernels are unavailable here (check attention_available())")
    y = qkv.new_empty(B, T, C)
    lse = qkv.new_empty(B, heads, T, dtype=torch.float32)
    if _lib.attention_forward(qkv.data_ptr(), y.data_ptr(), lse.data_ptr(), B, T, heads, D, window, scale,
                              torch.get_num_threads(), int(qkv.dtype == torch.bfloat16)):
        raise MemoryError("fused attention: out of memory")
    return y, lse


@attention_fwd.register_fake
def _(qkv, heads, window, scale):
    B, T, C3 = qkv.shape
    return qkv.new_empty(B, T, C3 // 3), qkv.new_empty(B, heads, T, dtype=torch.float32)


@torch.library.custom_op("tinystories::attention_bwd", mutates_args=(), device_types="cpu")
def attention_bwd(qkv: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, lse: torch.Tensor, heads: int, window: int,
                  scale: float) -> torch.Tensor:
    """d loss / d qkv, given the forward's inputs and outputs and d loss / d y."""
    B, T, C, D = _attention_dims(qkv, heads, window)
    _check("attention qkv", qkv, (B, T, 3 * C), _ATTENTION_DTYPES)
    _check("attention y", y, (B, T, C), (qkv.dtype,))
    _check("attention dy", dy, (B, T, C), (qkv.dtype,))
    _check("attention lse", lse, (B, heads, T), (torch.float32,))
    if _load() is None:
        raise RuntimeError("fused attention: the C kernels are unavailable here (check attention_available())")
    dqkv = torch.empty_like(qkv)
    if _lib.attention_backward(qkv.data_ptr(), y.data_ptr(), dy.data_ptr(), lse.data_ptr(), dqkv.data_ptr(), B, T,
                               heads, D, window, scale, torch.get_num_threads(), int(qkv.dtype == torch.bfloat16)):
        raise MemoryError("fused attention: out of memory")
    return dqkv


@attention_bwd.register_fake
def _(qkv, y, dy, lse, heads, window, scale):
    return torch.empty_like(qkv)


def _attention_setup(ctx, inputs, output):
    qkv, heads, window, scale = inputs
    y, lse = output
    ctx.save_for_backward(qkv, y, lse)
    ctx.args = (heads, window, scale)


def _attention_grad(ctx, dy, dlse):
    qkv, y, lse = ctx.saved_tensors
    heads, window, scale = ctx.args
    return attention_bwd(qkv, y, dy.contiguous().to(y.dtype), lse, heads, window, scale), None, None, None


attention_fwd.register_autograd(_attention_grad, setup_context=_attention_setup)


def fused_attention(qkv: torch.Tensor, heads: int, window: int | None, scale: float) -> torch.Tensor:
    """Causal self-attention of a fresh sequence: qkv [B, T, 3C] (q, k, v side by side, as the fused
    projection writes them; fp32 or bf16) -> [B, T, C] in qkv's dtype, heads side by side. `window`: a
    query sees itself and the window - 1 keys before it (None = all earlier keys). Same math as SDPA
    with that mask; bf16 inputs are summed in fp32."""
    # autocast must not re-cast inside the op: the kernel takes qkv's own dtype
    with torch.autocast("cpu", enabled=False):
        return attention_fwd(qkv.contiguous(), heads, window or 0, float(scale))[0]


# ------------------------------------------------------------------------ GELU (tanh) for training

def use_gelu_kernel(x: torch.Tensor) -> bool:
    """Whether `gelu` should take the C kernel for activations `x` (CPU, fp32 or bf16)."""
    return x.device.type == "cpu" and x.dtype in _ATTENTION_DTYPES and attention_available()


@torch.library.custom_op("tinystories::gelu_fwd", mutates_args=(), device_types="cpu")
def gelu_fwd(x: torch.Tensor) -> torch.Tensor:
    """gelu(x), tanh approximation (HF's gelu_new), in x's dtype with fp32 arithmetic."""
    _check("gelu x", x, tuple(x.shape), _ATTENTION_DTYPES)
    if _load() is None:
        raise RuntimeError("fused gelu: the C kernels are unavailable here (check attention_available())")
    y = torch.empty_like(x)
    _lib.gelu_forward(x.data_ptr(), y.data_ptr(), x.numel(), torch.get_num_threads(), int(x.dtype == torch.bfloat16))
    return y


@gelu_fwd.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("tinystories::gelu_bwd", mutates_args=(), device_types="cpu")
def gelu_bwd(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """dy * gelu'(x), in x's dtype with fp32 arithmetic."""
    _check("gelu x", x, tuple(x.shape), _ATTENTION_DTYPES)
    _check("gelu dy", dy, tuple(x.shape), (x.dtype,))
    if _load() is None:
        raise RuntimeError("fused gelu: the C kernels are unavailable here (check attention_available())")
    dx = torch.empty_like(x)
    _lib.gelu_backward(x.data_ptr(), dy.data_ptr(), dx.data_ptr(), x.numel(), torch.get_num_threads(),
                       int(x.dtype == torch.bfloat16))
    return dx


@gelu_bwd.register_fake
def _(x, dy):
    return torch.empty_like(x)


def _gelu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _gelu_grad(ctx, dy):
    (x,) = ctx.saved_tensors
    return gelu_bwd(x, dy.contiguous().to(x.dtype))


gelu_fwd.register_autograd(_gelu_grad, setup_context=_gelu_setup)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """F.gelu(x, approximate="tanh") through the C kernel (fp32 or bf16 on a CPU; see use_gelu_kernel):
    the same function to within fp32 rounding, each element computed alone."""
    with torch.autocast("cpu", enabled=False):
        return gelu_fwd(x.contiguous())


# ------------------------------------------------------------------------ generation's matrix products

SKINNY_MAX_ROWS = 16  # beyond this many rows a library GEMM is as fast
SKINNY_MIN_WEIGHTS = 1 << 16  # smaller matrices (the 1M model's) are as fast through the library


class Int8Weight(NamedTuple):
    """A weight matrix [N, K] as int8 with one scale per row: a quarter of the bytes, for drafting."""
    q: torch.Tensor       # int8 [N, K]
    scale: torch.Tensor   # fp32 [N]

    @classmethod
    def quantize(cls, w: torch.Tensor) -> "Int8Weight":
        w = w.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        return cls(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scale.contiguous())


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for inference. A few rows on a CPU (decoding) go through `skinny_linear`: it streams
    the weights once on every thread, at close to the memory bandwidth, and gives each row the
    same result whatever the number of rows (so that verifying drafts agrees with one-token steps).
    `weight` may be an `Int8Weight` (drafts only: approximate), or bf16 with fp32 x (a bf16 model's
    decoding, `generate --dtype bf16`): a few rows multiply fp32 x by the bf16 weights in C, with fp32
    products and sums; more rows go through the library's bf16 GEMM (x rounded to bf16). The result
    is fp32 either way."""
    rows = x.numel() // x.size(-1) if x.dim() else 0
    if isinstance(weight, Int8Weight):
        q, scale = weight
        x2 = x.reshape(rows, x.size(-1)).contiguous()
        N, K = q.shape
        if rows > SKINNY_MAX_ROWS or N < 4 or x.dtype != torch.float32 or not attention_available():
            return F.linear(x, q.float() * scale[:, None], bias)
        y = x.new_empty(rows, N)
        _lib.skinny_linear_i8(x2.data_ptr(), K, q.data_ptr(), scale.data_ptr(),
                              bias.data_ptr() if bias is not None else None, y.data_ptr(), N, rows, K, N,
                              torch.get_num_threads())
        return y.view(*x.shape[:-1], N)
    mixed = weight.dtype == torch.bfloat16 and x.dtype == torch.float32
    # what C needs either way: a few rows, CPU tensors, matching shapes, at least 4 output rows
    c_ok = (rows <= SKINNY_MAX_ROWS and x.device.type == "cpu" and weight.device.type == "cpu"
            and (bias is None or (bias.device.type == "cpu" and bias.shape == weight.shape[:1]))
            and weight.dim() == 2 and x.size(-1) == weight.size(1) and weight.size(0) >= 4 and attention_available())
    if mixed and not c_ok:
        return F.linear(x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype)).float()
    # a few rows with bf16 weights take the C product whatever the size (the library has no fp32 x
    # bf16 product); with fp32 weights, only where it beats the library GEMM (a big enough matrix)
    if not mixed and not (c_ok and x.dtype == torch.float32 and weight.dtype == torch.float32
                          and weight.numel() >= SKINNY_MIN_WEIGHTS):
        return F.linear(x, weight, bias)
    x2 = x.reshape(rows, x.size(-1))
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    weight = weight if weight.is_contiguous() else weight.contiguous()
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.float().contiguous()
    N, K = weight.shape
    y = x.new_empty(rows, N)
    run = _lib.skinny_linear_bf16 if mixed else _lib.skinny_linear
    run(x2.data_ptr(), x2.stride(0), weight.data_ptr(), bias.data_ptr() if bias is not None else None,
        y.data_ptr(), N, rows, K, N, torch.get_num_threads())
    return y.view(*x.shape[:-1], N)


# ------------------------------------------------------------------------ a whole block, for decoding

BLOCK_MIN_PARALLEL = 1 << 18  # weights (elements) of a block below which decode_block runs on one thread


class _Block(ctypes.Structure):
    _fields_ = [*[(name, ctypes.c_void_p) for name in (
        "ln1_w", "ln1_b", "ln2_w", "ln2_b", "w_qkv", "w_out", "w_fc", "w_proj",
        "s_qkv", "s_out", "s_fc", "s_proj", "b_out", "b_fc", "b_proj")], ("bf16", ctypes.c_int)]


def block_struct(ln1_w, ln1_b, w_qkv, w_out, b_out, ln2_w, ln2_b, w_fc, b_fc, w_proj, b_proj) -> "_Block | None":
    """The C view of one GPT-Neo block's weights, for `decode_block`: fp32 vectors, and matrices that
    are all fp32, all bf16 or all `Int8Weight`. None when the kernels are unavailable or a tensor is
    not a contiguous CPU one of those dtypes. The caller keeps the tensors alive (decode_weights'
    list holds them)."""
    if not attention_available():
        return None

    def ptr(t):
        ok = t.device.type == "cpu" and t.is_contiguous() and t.dtype in (torch.float32, torch.int8, torch.bfloat16)
        return t.data_ptr() if ok else None

    mats = [w_qkv, w_out, w_fc, w_proj]
    q8 = isinstance(w_qkv, Int8Weight)
    ptrs = dict(ln1_w=ptr(ln1_w), ln1_b=ptr(ln1_b), ln2_w=ptr(ln2_w), ln2_b=ptr(ln2_b),
                w_qkv=ptr(mats[0][0] if q8 else mats[0]), w_out=ptr(mats[1][0] if q8 else mats[1]),
                w_fc=ptr(mats[2][0] if q8 else mats[2]), w_proj=ptr(mats[3][0] if q8 else mats[3]),
                b_out=ptr(b_out), b_fc=ptr(b_fc), b_proj=ptr(b_proj))
    # one kind of matrix per block: all Int8Weight, all fp32 or all bf16 (C reads them with one loop)
    kinds = {"int8" if isinstance(m, Int8Weight) else m.dtype for m in mats}
    if (any(v is None for v in ptrs.values()) or len(kinds) != 1 or kinds == {torch.int8}
            or any(t.dtype != torch.float32 for t in (ln1_w, ln1_b, ln2_w, ln2_b, b_out, b_fc, b_proj))):
        return None
    ptrs["bf16"] = int(kinds == {torch.bfloat16})
    if q8:
        ptrs.update(s_qkv=ptr(w_qkv.scale), s_out=ptr(w_out.scale), s_fc=ptr(w_fc.scale), s_proj=ptr(w_proj.scale))
    return _Block(**ptrs)


def decode_block(x: torch.Tensor, blk: _Block, heads: int, mlp: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 start: int, window: int | None, scale: float, pad: torch.Tensor | None, eps: float) -> None:
    """One block over x [B, T, C] (updated in place) at cache slots start..start+T-1: the same
    arithmetic as the block's `forward` with a KV cache, in one call."""
    B, T, C = x.shape
    S = k_cache.size(2)
    # a small block is done before a second thread has woken up
    threads = torch.get_num_threads() if C * (4 * C + 2 * mlp) >= BLOCK_MIN_PARALLEL else 1
    work = torch.empty(_lib.decode_block_work(B * T, C, mlp, S, threads))
    _lib.decode_block(x.data_ptr(), B, T, C, heads, mlp, ctypes.byref(blk), k_cache.data_ptr(), v_cache.data_ptr(),
                      S, start, window or 0, scale, pad.data_ptr() if pad is not None else None, eps,
                      work.data_ptr(), threads)


# ------------------------------------------------------------------------ lm_head + cross-entropy

def softmax_xent(logits: torch.Tensor, targets: torch.Tensor, grad_scale: float, grads: bool,
                 grad_dtype: torch.dtype) -> tuple[float, torch.Tensor | None]:
    """(sum over rows with a target of logsumexp - logit[target], (softmax - onehot) * grad_scale in
    `grad_dtype` with zero rows where the target is -1, or None) for logits [rows, V] (fp32 or bf16)."""
    rows, V = logits.shape if logits.dim() == 2 else (-1, -1)
    _check("xent logits", logits, (rows, V), _ATTENTION_DTYPES)
    _check("xent targets", targets, (rows,), (torch.int64,))
    if grad_dtype not in _ATTENTION_DTYPES:
        raise ValueError(f"xent: gradient dtype must be fp32 or bf16, got {grad_dtype}")
    if rows and (int(targets.max()) >= V or int(targets.min()) < -1):
        raise ValueError(f"xent: targets must lie in [-1, {V}); got {int(targets.min())}..{int(targets.max())}")
    if _load() is None:
        raise RuntimeError("xent: the C kernels are unavailable here (check attention_available())")
    grad = torch.empty(rows, V, dtype=grad_dtype) if grads else None
    total = ctypes.c_double()
    _lib.softmax_xent(logits.data_ptr(), targets.data_ptr(), grad.data_ptr() if grads else None, rows, V,
                      grad_scale, ctypes.byref(total), torch.get_num_threads(), int(logits.dtype == torch.bfloat16),
                      int(grad_dtype == torch.bfloat16))
    return total.value, grad


def _xent_torch(logits, targets, scale: float, grads: bool, dtype):
    """softmax_xent's arithmetic in library ops (no C compiler)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    keep = targets != -1
    safe = targets.clamp(min=0)
    total = ((lse - logits.gather(1, safe[:, None])[:, 0]) * keep).sum(dtype=torch.float64).item()
    if not grads:
        return total, None
    grad = logits.sub_(lse[:, None]).exp_()
    grad.scatter_add_(1, safe[:, None], -keep[:, None].to(grad.dtype))
    grad.mul_((keep.to(grad.dtype) * scale)[:, None])
    return total, grad.to(dtype)


def _lm_head_loss(x, weight, targets, rows: int, grads: bool, dtype: torch.dtype):
    """(mean loss, dx, dweight) computed a slice of rows at a time; no gradients unless `grads`.

    `dtype` is the matrix products' (fp32, or bf16 under bf16 autocast: bf16 operands, fp32 sums
    inside the library GEMM). The log-sum-exp, the softmax gradient and the weight gradient's
    running sum are fp32; dx comes back in x's dtype and dweight in the weight's."""
    count = int((targets != -1).sum())
    scale = 1.0 / max(count, 1)
    xent = softmax_xent if attention_available() else _xent_torch
    w = weight.to(dtype)
    dx = torch.empty_like(x) if grads else None
    dw = torch.zeros(weight.shape, dtype=torch.float32) if grads else None
    total = 0.0
    for s in range(0, x.size(0), rows):
        xs, ts = x[s:s + rows].to(dtype), targets[s:s + rows].contiguous()
        logits = xs @ w.t()                              # [rows, V]
        part, grad = xent(logits, ts, scale, grads, dtype)
        total += part
        if grads:
            if dtype == torch.float32:
                torch.mm(grad, w, out=dx[s:s + rows])
                dw.addmm_(grad.t(), xs)
            else:
                dx[s:s + rows] = grad @ w
                dw += (grad.t() @ xs).float()
    loss = x.new_tensor(total / count if count else float("nan"), dtype=torch.float32)
    return loss, dx, (dw.to(weight.dtype) if grads else None)


class _LMHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int, dtype: torch.dtype):
        loss, dx, dw = _lm_head_loss(x, weight, targets, rows, True, dtype)
        ctx.save_for_backward(dx, dw)
        return loss

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        dx, dw = ctx.saved_tensors
        return dx * g.to(dx.dtype), dw * g.to(dw.dtype), None, None, None


def use_chunked_loss(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _ATTENTION_DTYPES and _autocast_ok()


def lm_head_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """Mean cross-entropy (fp32) of logits x @ weight.T against targets (-1 = ignored), without
    materialising all the logits: x [N, C], weight [V, C], targets [N]. Equals
    F.cross_entropy(x @ weight.T, targets, ignore_index=-1) up to float rounding; under bf16
    autocast (or with bf16 x) the products take bf16 operands, as autocast's lm_head would."""
    bf16 = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    dtype = torch.bfloat16 if bf16 else torch.float32
    with torch.autocast("cpu", enabled=False):  # the dtypes above are explicit
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _LMHeadLoss.apply(x, weight, targets, rows, dtype)
        return _lm_head_loss(x, weight, targets, rows, False, dtype)[0]
