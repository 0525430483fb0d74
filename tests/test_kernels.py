"""The CPU speed paths (issue 8) compute what the plain PyTorch paths compute.

Fused attention (forward and backward) against SDPA with the same causal / sliding-window mask,
on sequences longer than the 256-token window; the chunked lm_head + cross-entropy against
F.cross_entropy, gradients included; the skinny matrix product (fp32, int8 and bf16 weights) against F.linear
and independent of how many rows it gets; the fused decode block against the per-op decode, and
with bf16 weights against fp32 ones holding the same values;
speculative greedy decoding with int8 drafts against one token per pass. No timings here:
speed is benchmarks/run.py's job.
"""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import TRAIN_TXT

from tinystories.data.tokenizer import train_bpe
from tinystories.generate import fast
from tinystories.generate.sampling import generate
from tinystories.kernels import cpu as kernels
from tinystories.model.config import ModelConfig
from tinystories.model.gpt_neo import GPTNeo

pytestmark = pytest.mark.skipif(not kernels.attention_available(),
                                reason="no C compiler: the kernels fall back to PyTorch (tested elsewhere)")


def _reference_attention(qkv, heads, window, scale):
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = qkv.view(B, T, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & ((j > i - window) if window else True)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return y.transpose(1, 2).reshape(B, T, C)


@pytest.mark.parametrize("head_dim,window,scale", [(4, 256, 1.0), (16, None, 1.0), (3, 100, 0.5), (48, 256, 1.0)])
def test_fused_attention_equals_sdpa_with_gradients(head_dim, window, scale):
    torch.manual_seed(0)
    B, T, H = 2, 301, 3  # T > window, not a multiple of the kernel's 4-row or 8-key blocks
    qkv = torch.randn(B, T, 3 * H * head_dim, requires_grad=True)
    g = torch.randn(B, T, H * head_dim)
    ref = _reference_attention(qkv, H, window, scale)
    (ref_grad,) = torch.autograd.grad(ref, qkv, g)
    out = kernels.fused_attention(qkv, H, window, scale)
    (grad,) = torch.autograd.grad(out, qkv, g)
    assert (out - ref).abs().max() < 1e-5
    assert (grad - ref_grad).abs().max() < 1e-4 * max(1.0, ref_grad.abs().max().item())
    # a query beyond the window does not see the key it must not see
    if window:
        probe = qkv.detach().clone()
        probe[:, 0, 2 * H * head_dim:] += 100.0  # value of token 0
        moved = kernels.fused_attention(probe, H, window, scale) - out.detach()
        assert moved[:, window:].abs().max() == 0 and moved[:, 0].abs().max() > 1
        # nor does a huge score for a key outside its window change its softmax (the row's maximum is taken
        # over its own keys only, though the kernel's blocks load keys a few rows before each row's window)
        probe = qkv.detach().clone()
        probe[:, :4, H * head_dim:2 * H * head_dim] += 30.0  # keys of tokens 0-3
        moved = kernels.fused_attention(probe, H, window, scale) - out.detach()
        assert moved[:, window + 3:].abs().max() == 0 and moved[:, :window].abs().max() > 0


@pytest.mark.parametrize("head_dim,window", [(4, 256), (16, None), (3, 100)])
def test_fused_attention_in_bf16_equals_fp32_sdpa_on_the_same_numbers(head_dim, window):
    """bf16 activations in and out, fp32 sums inside: against fp32 SDPA on the same (bf16-rounded)
    inputs, the only error is rounding the outputs to bf16 (relative 2^-8 of the largest value)."""
    torch.manual_seed(7)
    B, T, H = 2, 301, 3
    qkv = torch.randn(B, T, 3 * H * head_dim).bfloat16()
    g = torch.randn(B, T, H * head_dim).bfloat16()
    ref_in = qkv.float().requires_grad_()
    ref = _reference_attention(ref_in, H, window, 0.5)
    (ref_grad,) = torch.autograd.grad(ref, ref_in, g.float())
    x = qkv.clone().requires_grad_()
    out = kernels.fused_attention(x, H, window, 0.5)
    (grad,) = torch.autograd.grad(out, x, g)
    assert out.dtype == grad.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 2 ** -8 * ref.abs().max()
    assert (grad.float() - ref_grad).abs().max() <= 2 ** -8 * ref_grad.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gelu_equals_the_librarys_tanh_gelu_with_gradients(dtype):
    """The training MLP's C gelu against F.gelu(approximate="tanh") and its autograd gradient: fp32 to
    within fp32 rounding; bf16 computes in fp32 on the same bf16 inputs and rounds once, so it is within
    one bf16 rounding (2^-8 relative) of the library's fp32 result. The size is not a multiple of the
    kernel's chunks, and the values run from the tails (|x| up to 100, where tanh saturates) through 0."""
    torch.manual_seed(3)
    x = torch.cat([torch.randn(3 * 4097) * 3, torch.linspace(-100, 100, 1001), torch.zeros(1)]).to(dtype)
    g = torch.randn_like(x, dtype=torch.float32).to(dtype)
    ref_in = x.float().requires_grad_()
    ref = F.gelu(ref_in, approximate="tanh")
    (ref_grad,) = torch.autograd.grad(ref, ref_in, g.float())
    xi = x.clone().requires_grad_()
    out = kernels.gelu(xi)
    (grad,) = torch.autograd.grad(out, xi, g)
    assert out.dtype == grad.dtype == dtype and out.shape == x.shape
    tol = 2e-6 if dtype == torch.float32 else 2 ** -8
    assert ((out.float() - ref).abs() <= tol * ref.abs().clamp(min=1.0)).all()
    assert ((grad.float() - ref_grad).abs() <= tol * ref_grad.abs().clamp(min=1.0)).all()
    # a 2-D activation (the MLP's [rows, 4C]) and a model in training mode take it; eval keeps the library's
    cfg = ModelConfig(vocab_size=300, context=64, hidden=32, layers=1, heads=8)
    mlp = GPTNeo(cfg).blocks[0].mlp
    h = torch.randn(2, 64, 32)
    calls = []
    fused = kernels.gelu
    try:
        kernels.gelu = lambda t: calls.append(t.shape) or fused(t)
        train_out = mlp.train()(h)
        with torch.no_grad():
            eval_out = mlp.eval()(h)
    finally:
        kernels.gelu = fused
    assert calls == [torch.Size([2, 64, 128])]
    assert torch.allclose(train_out, eval_out, atol=1e-6)


def test_kernel_boundary_rejects_wrong_shapes_dtypes_and_arguments():
    """The C entry points take sizes only from checked tensors: a mistake raises, never corrupts."""
    B, T, H, D = 2, 9, 2, 4
    qkv = torch.randn(B, T, 3 * H * D)
    y, lse = kernels.attention_fwd(qkv, H, 0, 1.0)
    bad_calls = [
        lambda: kernels.attention_fwd(qkv[:, :, :-1], H, 0, 1.0),              # not 3 * heads * head_dim
        lambda: kernels.attention_fwd(qkv, 5, 0, 1.0),                         # heads do not divide C
        lambda: kernels.attention_fwd(qkv.double(), H, 0, 1.0),                # dtype
        lambda: kernels.attention_fwd(qkv.transpose(0, 1), H, 0, 1.0),         # layout (strides)
        lambda: kernels.attention_fwd(qkv, H, -3, 1.0),                        # window
        lambda: kernels.attention_bwd(qkv, y, y, lse.transpose(1, 2).contiguous(), H, 0, 1.0),  # lse [B, T, H]
        lambda: kernels.attention_bwd(qkv, lse, y, y, H, 0, 1.0),              # arguments swapped
        lambda: kernels.attention_bwd(qkv, y.bfloat16(), y, lse, H, 0, 1.0),   # mixed dtypes
        lambda: kernels.softmax_xent(torch.randn(3, 5), torch.tensor([0, 5, 1]), 1.0, True, torch.float32),  # target
        lambda: kernels.softmax_xent(torch.randn(3, 5), torch.tensor([0, 1]), 1.0, True, torch.float32),     # rows
        lambda: kernels.softmax_xent(torch.randn(3, 5), torch.tensor([0, 1, 2]).int(), 1.0, True, torch.float32),
        lambda: kernels.gelu_fwd(qkv.double()),                               # gelu: dtype
        lambda: kernels.gelu_fwd(qkv.transpose(0, 1)),                        # gelu: layout
        lambda: kernels.gelu_bwd(qkv, qkv.bfloat16()),                        # gelu: mixed dtypes
        lambda: kernels.gelu_bwd(qkv, y),                                     # gelu: shapes differ
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    # the registration: schema matches what the op does, and the fake (tracing) version agrees on shapes
    checks = torch.library.opcheck(kernels.attention_fwd, (qkv, H, 3, 0.5), test_utils=("test_schema", "test_faketensor"))
    assert set(checks.values()) == {"SUCCESS"}
    checks = torch.library.opcheck(kernels.gelu_fwd, (qkv,), test_utils=("test_schema", "test_faketensor"))
    assert set(checks.values()) == {"SUCCESS"}


def test_bf16_autocast_keeps_the_fast_paths_and_matches_fp32_loss():
    """Under bf16 autocast the model's attention and loss stay on the kernels (no SDPA fallback), and
    loss and gradients agree with the fp32 kernels to bf16 accuracy."""
    cfg = ModelConfig(vocab_size=300, context=320, hidden=32, layers=2, heads=8, window=256)
    torch.manual_seed(8)
    model = GPTNeo(cfg)
    idx, tgt = torch.randint(0, 300, (2, 300)), torch.randint(0, 300, (2, 300))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qkv = model.blocks[0].attn.qkv(torch.randn(2, 4, 32))
        assert kernels.use_attention_kernel(qkv, 4, 0.0) and kernels.use_chunked_loss(qkv)
        loss16 = model(idx, tgt)
    g16 = torch.autograd.grad(loss16, list(model.parameters()))
    loss32 = model(idx, tgt)
    g32 = torch.autograd.grad(loss32, list(model.parameters()))
    assert loss16.dtype == torch.float32 and abs(loss16.item() - loss32.item()) < 0.02
    for a, b in zip(g16, g32):
        assert a.dtype == torch.float32
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-6


def test_lm_head_loss_in_bf16_equals_cross_entropy_of_bf16_logits():
    torch.manual_seed(9)
    x = torch.randn(700, 32, requires_grad=True)
    w = torch.randn(500, 32, requires_grad=True)
    targets = torch.randint(0, 500, (700,))
    targets[::7] = -1
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own lm_head + cross-entropy
        ref = F.cross_entropy((x @ w.t()).float(), targets, ignore_index=-1)
        loss = kernels.lm_head_loss(x, w, targets, rows=128)
    rgx, rgw = torch.autograd.grad(ref, (x, w))
    gx, gw = torch.autograd.grad(loss, (x, w))
    assert loss.dtype == torch.float32 and gw.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # both round the gradient to bf16 before the products: a few bf16 ulps apart
    assert (gx - rgx).abs().max() <= 2 ** -6 * rgx.abs().max()
    assert (gw - rgw).abs().max() <= 2 ** -6 * rgw.abs().max()


def test_lm_head_loss_equals_cross_entropy_with_gradients():
    torch.manual_seed(1)
    x = torch.randn(700, 32, requires_grad=True)
    w = torch.randn(500, 32, requires_grad=True)
    targets = torch.randint(0, 500, (700,))
    targets[::7] = -1  # ignored positions
    ref = F.cross_entropy(x @ w.t(), targets, ignore_index=-1)
    rgx, rgw = torch.autograd.grad(ref * 3.0, (x, w))
    loss = kernels.lm_head_loss(x, w, targets, rows=128)  # 700 = 5 full slices and a partial one
    gx, gw = torch.autograd.grad(loss * 3.0, (x, w))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(gx, rgx, atol=1e-6) and torch.allclose(gw, rgw, atol=1e-5)
    with torch.no_grad():
        assert kernels.lm_head_loss(x, w, targets).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_xent_finds_each_rows_maximum_wherever_it_lies(dtype):
    # one logit per row 150 above the rest, at every position, the tail past the last 8-wide block
    # included: a row maximum that missed it would hand the exp a positive argument, outside the range
    # exp_neg is written for, and the loss and gradient would be garbage
    torch.manual_seed(3)
    V = 203
    logits = torch.randn(V, V) * 3
    logits[torch.arange(V), torch.arange(V)] += 150.0
    logits = logits.to(dtype)
    targets = torch.randint(0, V, (V,))
    total, grad = kernels.softmax_xent(logits, targets, 1.0, True, torch.float32)
    ref = logits.float().requires_grad_()
    loss = F.cross_entropy(ref, targets, reduction="sum")
    (ref_grad,) = torch.autograd.grad(loss, ref)
    assert total == pytest.approx(loss.item(), rel=1e-6)
    assert (grad - ref_grad).abs().max() < 1e-6


@pytest.mark.parametrize("block", [{}, {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}])
def test_model_loss_and_gradients_with_and_without_kernels(monkeypatch, block):
    # the budget recipe's block (rope) rotates q and k before the fused kernel: same loss and gradients
    cfg = ModelConfig(vocab_size=300, context=320, hidden=32, layers=2, heads=8, window=256, **block)
    torch.manual_seed(2)
    model = GPTNeo(cfg)
    idx = torch.randint(0, 300, (2, 300))
    tgt = torch.randint(0, 300, (2, 300))
    grads, calls = {}, []
    fused = kernels.fused_attention
    monkeypatch.setattr(kernels, "fused_attention", lambda *a: calls.append(1) or fused(*a))
    for flag in ("1", "0"):
        monkeypatch.setenv("TINYSTORIES_KERNELS", flag)
        model.zero_grad()
        loss = model(idx, tgt)
        loss.backward()
        grads[flag] = (loss.item(), [p.grad.clone() for p in model.parameters()])
        assert len(calls) == (cfg.layers if flag == "1" else 0)  # every layer took the kernel, then none
        calls.clear()
    assert grads["1"][0] == pytest.approx(grads["0"][0], rel=1e-6)
    for a, b in zip(grads["1"][1], grads["0"][1]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_skinny_linear_matches_and_does_not_depend_on_the_rows():
    torch.manual_seed(3)
    w, b = torch.randn(1003, 257), torch.randn(1003)  # sizes off the kernel's blocks of 4 rows
    x = torch.randn(7, 257)
    y = kernels.linear(x, w, b)
    assert torch.allclose(y, F.linear(x, w, b), atol=1e-4)
    for m in range(1, 8):  # verifying drafts must give exactly what one-token steps give
        assert torch.equal(kernels.linear(x[:m], w, b), y[:m])
    q = kernels.Int8Weight.quantize(w)
    deq = q.q.float() * q.scale[:, None]
    assert (deq - w).abs().max() <= q.scale.max() / 2 + 1e-6
    assert torch.allclose(kernels.linear(x, q, b), F.linear(x, deq, b), atol=1e-3)


def _decode_model(window: int, seed: int) -> GPTNeo:
    """A small paper-block model in eval mode, its weights moved off their initial values."""
    cfg = ModelConfig(vocab_size=300, context=320, hidden=64, layers=2, heads=4, window=window)
    torch.manual_seed(seed)
    model = GPTNeo(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("window", [256, 16])
def test_fused_decode_block_equals_per_op_decode(window):
    model = _decode_model(window, seed=4)
    fused = fast.decode_weights(model)
    assert all(layer.block is not None for layer in fused.layers)
    plain = fused._replace(layers=[layer._replace(block=None) for layer in fused.layers])
    ids = torch.randint(0, 300, (3, 310))
    pad = torch.tensor([0, 3, 30])
    caches = [model.new_cache(3, 320), model.new_cache(3, 320)]
    with torch.inference_mode():
        for c, w in zip(caches, (fused, plain)):  # prefill (many rows: per-op either way)
            fast.decode(model, ids[:, :280], c, 0, pad=pad, weights=w)
        for s in range(280, 310, 3):  # 3 rows x 3 tokens: fused
            a = fast.decode(model, ids[:, s:s + 3], caches[0], s, pad=pad, weights=fused, last_only=False)
            b = fast.decode(model, ids[:, s:s + 3], caches[1], s, pad=pad, weights=plain, last_only=False)
            assert (a - b).abs().max() < 1e-4
        full = model(ids[:1, :310])  # row 0 has no padding: the full forward pass agrees
    assert (a[0] - full[0, -3:]).abs().max() < 1e-4
    for k1, k2 in zip(caches[0].k, caches[1].k):
        assert (k1[:, :, :310] - k2[:, :, :310]).abs().max() < 1e-4


def test_skinny_linear_with_bf16_weights_multiplies_in_fp32():
    torch.manual_seed(6)
    w, b = torch.randn(1003, 257).bfloat16(), torch.randn(1003)
    x = torch.randn(7, 257)
    y = kernels.linear(x, w, b)
    assert y.dtype == torch.float32
    assert torch.allclose(y, F.linear(x, w.float(), b), atol=1e-4)  # fp32 x times the weights' exact values
    for m in range(1, 8):
        assert torch.equal(kernels.linear(x[:m], w, b), y[:m])
    many = torch.randn(40, 257)  # past the few rows: the library's bf16 product (x rounded), still fp32 out
    ref = F.linear(many, w.float(), b)
    assert (kernels.linear(many, w, b) - ref).abs().max() < 0.03 * ref.abs().max()


@pytest.mark.parametrize("window", [256, 16])
def test_bf16_decode_computes_what_fp32_does_with_the_rounded_weights(window):
    # generate --dtype bf16 on a CPU: bf16 matrices, fp32 activations and cache. Its C blocks must give
    # what the fp32 C blocks give for an fp32 model that holds the same (bf16-rounded) weights
    model = _decode_model(window, seed=7)
    bf = copy.deepcopy(model).to(torch.bfloat16)
    rounded = copy.deepcopy(bf).float()
    wb, wr = fast.decode_weights(bf), fast.decode_weights(rounded)
    assert wb.cache_dtype == torch.float32 and all(layer.block is not None and layer.block.bf16 for layer in wb.layers)
    assert not any(layer.block.bf16 for layer in wr.layers)
    ids = torch.randint(0, 300, (2, 48))
    caches = [bf.new_cache(2, 320, dtype=torch.float32), rounded.new_cache(2, 320)]
    with pytest.raises(ValueError, match="the cache is torch.bfloat16"):
        fast.decode(bf, ids[:, :8], bf.new_cache(2, 320), 0, weights=wb)
    with torch.inference_mode():
        for s in range(0, 48, 8):  # 2 rows x 8 tokens: every block in C
            a = fast.decode(bf, ids[:, s:s + 8], caches[0], s, weights=wb, last_only=False)
            b = fast.decode(rounded, ids[:, s:s + 8], caches[1], s, weights=wr, last_only=False)
            assert a.dtype == torch.float32 and (a - b).abs().max() < 1e-4
        full = rounded(ids)  # the fp32 forward pass of the rounded weights agrees too
        assert (a - full[:, -8:]).abs().max() < 1e-4
        assert (caches[0].k[1][:, :, :48] - caches[1].k[1][:, :, :48]).abs().max() < 1e-5
        # 96 rows at once (a prefill): the library's bf16 product, activations rounded to bf16 on the way in
        many = fast.decode(bf, ids, bf.new_cache(2, 320, dtype=torch.float32), 0, weights=wb, last_only=False)
        assert many.dtype == torch.float32 and (many - full).abs().max() < 0.05 * full.abs().max()


def _stories(n: int) -> list[str]:
    """The first n stories of the shared training file, as the split text (not stripped)."""
    return [s for s in TRAIN_TXT.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()][:n]


def test_int8_drafts_of_a_bf16_model_give_exactly_its_greedy_output():
    # generate --dtype bf16 drafts with an int8 copy too; the verifying passes keep the output exact
    cfg = ModelConfig(vocab_size=300, context=256, hidden=64, layers=2, heads=4, window=64)
    torch.manual_seed(8)
    bf = GPTNeo(cfg).eval().to(torch.bfloat16)
    tok = train_bpe(_stories(100), 300)
    with torch.inference_mode():
        plain = generate(bf, tok, ["Once upon a time"], max_new_tokens=40, temperature=0, lookup=0, draft="off")
        drafted = generate(bf, tok, ["Once upon a time"], max_new_tokens=40, temperature=0, lookup=0, draft="on")
    assert plain[0][0].tokens == drafted[0][0].tokens and len(plain[0][0].tokens) > 0


def test_int8_drafts_give_exactly_the_greedy_output():
    stories = _stories(300)
    tok = train_bpe(stories, 400)
    data = torch.tensor([i for ids in tok.encode_batch(stories) for i in ids + [tok.eot_id]])
    cfg = ModelConfig(vocab_size=400, context=256, hidden=64, layers=2, heads=4, window=64)
    torch.manual_seed(5)
    model = GPTNeo(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):  # a few seconds: enough for the drafts to be right often, and wrong sometimes
        ix = torch.randint(0, len(data) - 129, (8,), generator=g)
        loss = model(torch.stack([data[i:i + 128] for i in ix]), torch.stack([data[i + 1:i + 129] for i in ix]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    prompts = ["Once upon a time, there was a little girl named Lily. She", "Tom had a big red ball."]
    for p in prompts:
        plain = generate(model, tok, [p], max_new_tokens=120, temperature=0, lookup=0, draft="off")[0][0]
        drafted = generate(model, tok, [p], max_new_tokens=120, temperature=0, lookup=0, draft="on")[0][0]
        both = generate(model, tok, [p], max_new_tokens=120, temperature=0, draft="on")[0][0]
        assert drafted.tokens == plain.tokens and both.tokens == plain.tokens
        assert drafted.finish_reason == plain.finish_reason


def test_kernels_build_in_a_fresh_cache_and_can_be_turned_off(tmp_path, monkeypatch):
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    out = tmp_path / "k.so"
    assert kernels._compile(out) and out.stat().st_size > 0
    monkeypatch.setenv("TINYSTORIES_KERNELS", "0")
    assert not kernels.attention_available()
    x = torch.randn(2, 5, 3 * 16)
    assert not kernels.use_attention_kernel(x, 4, 0.0)


def test_static_decode_for_cuda_graphs_equals_decode():
    """The pass CUDA graphs capture (slot as a tensor, whole-cache attention under a mask) is the
    same arithmetic as `decode`; checked here on the CPU, since the capture itself needs a GPU."""
    cfg = ModelConfig(vocab_size=300, context=300, hidden=32, layers=2, heads=4, window=16)
    torch.manual_seed(6)
    model = GPTNeo(cfg).eval()
    w = fast.decode_weights(model)
    ids = torch.randint(0, 300, (2, 60))
    for pad in (None, torch.tensor([0, 7])):
        c1, c2 = model.new_cache(2, 64), model.new_cache(2, 64)
        with torch.inference_mode():
            fast.decode(model, ids[:, :40], c1, 0, pad=pad, weights=w)
            fast.decode(model, ids[:, :40], c2, 0, pad=pad, weights=w)
            for n in range(40, 60):
                a = fast.decode(model, ids[:, n:n + 1], c1, n, pad=pad, weights=w)
                b = fast.decode_static(model, ids[:, n:n + 1], c2, torch.tensor(n), pad, w)
                assert (a - b).abs().max() < 1e-5


_KEPT = """
import sys, torch
from tinystories.runtime.device import keep_freed_memory
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
acts = [torch.ones(4 * 2 ** 20) for _ in range(6)]  # a step's activations: 6 x 16 MiB, used, then freed at once
del acts
print((rss() - before) // 2 ** 20)
"""


def test_training_keeps_freed_memory_for_the_next_step():
    """keep_freed_memory (called by `train` on a CPU): the activations a step frees stay in the process
    for the next step to reuse, where glibc's defaults give them back to the kernel (munmap, or trimming
    the heap), and the next step faults every page back in, zeroed (240 MiB a step on the 8M preset)."""
    import ctypes
    import subprocess
    import sys

    if not hasattr(ctypes.CDLL(None), "mallopt") or not os.path.exists("/proc/self/statm"):
        pytest.skip("not glibc on Linux: keep_freed_memory does nothing here")
    kept = {how: int(subprocess.run([sys.executable, "-c", _KEPT, how], capture_output=True, text=True,
                                    check=True).stdout) for how in ("default", "keep")}
    assert kept["default"] < 20  # MiB still resident after the free: given back
    assert kept["keep"] >= 90    # kept: the 96 MiB stay for reuse
