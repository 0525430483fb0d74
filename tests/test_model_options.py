"""The block options of ModelConfig (issue 17): each one changes the forward pass as specified, the
presets leave them off, and the fast decode paths step aside for them (generation goes through
`forward`, and its cached output equals a full recompute)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinystories.errors import UserError
from tinystories.generate import fast
from tinystories.model.config import (
    PRESETS,
    ModelConfig,
    parameter_counts,
    preset_config,
)
from tinystories.model.gpt_neo import GPTNeo, Masks, Pass

V = 96


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors: a second thread only adds waiting (a lot of it on a loaded machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(seed: int = 0, **kw) -> GPTNeo:
    cfg = ModelConfig(vocab_size=V, context=64, hidden=32, layers=2, heads=4, window=8, **kw)
    torch.manual_seed(seed)
    model = GPTNeo(cfg).eval()
    with torch.no_grad():  # larger than the init, so that every part of the block matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _ids(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, V, (2, n), generator=torch.Generator().manual_seed(seed))


def _copy_weights(src: GPTNeo, dst: GPTNeo) -> None:
    dst.load_state_dict(src.state_dict(), strict=False)


def test_presets_leave_every_option_off():
    for name in PRESETS:
        cfg = preset_config(name)
        assert cfg.block_options == [] and cfg.tie_embeddings, name
    assert ModelConfig().is_paper_block


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k():
    ids = _ids()
    model = _model(qk_norm=True)
    plain = _model(qk_norm=False)
    _copy_weights(model, plain)
    with torch.no_grad():
        before = model(ids)
        assert not torch.allclose(before, plain(ids), atol=1e-4)  # the option does something
        for b in (model, plain):  # q and k rows times 7: qk_norm undoes it, the plain block does not
            b.blocks[0].attn.qkv.weight[:64] *= 7.0
        assert torch.allclose(model(ids), before, atol=1e-4)
        assert not torch.allclose(plain(ids), before, atol=1e-2)


def test_relu2_mlp_is_relu_squared():
    model = _model(mlp="relu2")
    mlp = model.blocks[0].mlp
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.allclose(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2), atol=1e-6)
    assert mlp.c_fc.out_features == 4 * 32


def test_zero_init_starts_every_block_as_the_identity():
    cfg = ModelConfig(vocab_size=V, context=64, hidden=32, layers=2, heads=4, zero_init=True)
    torch.manual_seed(0)
    model = GPTNeo(cfg).eval()
    for b in model.blocks:
        assert b.attn.out_proj.weight.abs().max() == 0 and b.mlp.c_proj.weight.abs().max() == 0
        assert b.attn.qkv.weight.abs().max() > 0  # only the output projections
    ids = _ids()
    with torch.no_grad():
        x = model.wte(ids) + model.wpe.weight[:ids.size(1)]
        assert torch.allclose(model(ids), model.lm_head(model.ln_f(x)), atol=1e-5)
    swiglu = GPTNeo(cfg.replace(position="rope", norm="rmsnorm", mlp="swiglu"))
    assert all(b.mlp.down.weight.abs().max() == 0 for b in swiglu.blocks)


def test_untied_head_is_its_own_matrix():
    tied, untied = _model(), _model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_parameters() - tied.num_parameters() == V * 32
    assert parameter_counts(untied.config)["total"] == untied.num_parameters()


def test_logit_softcap_bounds_the_logits_and_the_loss_uses_them():
    model, plain = _model(logit_softcap=0.5), _model()
    _copy_weights(model, plain)
    ids = _ids()
    with torch.no_grad():
        raw, logits = plain(ids), model(ids)
        assert raw.abs().max() > 0.5 and logits.abs().max() < 0.5
        assert torch.allclose(logits, 0.5 * torch.tanh(raw / 0.5), atol=1e-5)
        loss = model(ids[:, :-1], ids[:, 1:])
        want = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
        assert torch.allclose(loss, want, atol=1e-5)


def test_value_embeddings_feed_each_layers_values():
    model = _model(value_embeddings=True)
    assert model.vte is not None and all(b.attn.ve_gain is not None for b in model.blocks)
    ids = _ids()
    plain = _model(value_embeddings=False)
    _copy_weights(model, plain)
    with torch.no_grad():
        out = model(ids)
        assert not torch.allclose(out, plain(ids), atol=1e-4)
        for b in model.blocks:  # gains 0: the plain block again
            b.attn.ve_gain.zero_()
        assert torch.allclose(model(ids), plain(ids), atol=1e-5)
    loss = _model(value_embeddings=True)(ids[:, :-1], ids[:, 1:])
    loss.backward()


def test_x0_mix_mixes_the_embeddings_into_each_block_input():
    model = _model(x0_mix=True)
    plain = _model()
    _copy_weights(model, plain)
    ids = _ids()
    with torch.no_grad():
        for b in model.blocks:
            b.x_gains.copy_(torch.tensor([1.0, 0.0]))
        assert torch.allclose(model(ids), plain(ids), atol=1e-5)  # starts as the plain block
        model.blocks[1].x_gains.copy_(torch.tensor([0.5, 2.0]))
        x0 = model.wte(ids) + model.wpe.weight[:ids.size(1)]
        h = model.blocks[0](x0, _pass(model, ids))
        h = 0.5 * h + 2.0 * x0  # block 1's input, by hand
        b = model.blocks[1]
        h = h + b.attn(b.ln_1(h), _pass(model, ids))
        h = h + b.mlp(b.ln_2(h))
        assert torch.allclose(model(ids), model.lm_head(model.ln_f(h)), atol=1e-5)


def _pass(model, ids):
    from tinystories.model.gpt_neo import Masks, Pass

    x0 = model.wte(ids) + model.wpe.weight[:ids.size(1)]
    return Pass(0, Masks(0, ids.size(1), ids.device, None), x0=x0)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_document_masking_keeps_stories_apart(position):
    eot = 0
    kw = {"position": position} if position == "learned" else {"position": "rope", "norm": "rmsnorm"}
    model = _model(doc_mask_token=eot, **kw)
    ids = _ids(40)
    ids[:, 15] = eot  # story 2 starts at slot 15
    other = ids.clone()
    other[:, 1:15] = torch.randint(1, V, (2, 14))  # a different first story
    with torch.no_grad():
        a, b = model(ids), model(other)
        assert torch.allclose(a[:, 15:], b[:, 15:], atol=1e-5)  # story 2 never saw story 1
        assert not torch.allclose(a[:, 1:15], b[:, 1:15], atol=1e-3)
        if position == "rope":  # relative positions: story 2 alone gives the same logits
            assert torch.allclose(a[:, 15:], model(ids[:, 15:]), atol=1e-4)
        unmasked = _model(**kw)
        _copy_weights(model, unmasked)
        assert not torch.allclose(unmasked(ids)[:, 15:], unmasked(other)[:, 15:], atol=1e-3)


def test_every_option_decodes_through_forward_and_the_cache_agrees():
    options = [{"qk_norm": True}, {"mlp": "relu2"}, {"logit_softcap": 3.0}, {"value_embeddings": True},
               {"x0_mix": True}, {"doc_mask_token": 0}, {"zero_init": True}, {"tie_embeddings": False}]
    ids = _ids(30)
    for kw in options:
        model = _model(**kw)
        if kw != {"tie_embeddings": False}:  # an untied head is still GPT-Neo: the flat path runs it
            assert fast.decode_weights(model) is None, kw
        cache = model.new_cache(2, 30)
        with torch.no_grad():
            steps = [fast.decode(model, ids[:, :10], cache, 0, last_only=False)]
            steps += [fast.decode(model, ids[:, i:i + 1], cache, i, last_only=False) for i in range(10, 30)]
            assert (torch.cat(steps, 1) - model(ids)).abs().max() < 1e-4, kw


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_qk_norm_and_value_embeddings_train_on_the_fused_kernel_with_sdpas_numbers(position, monkeypatch):
    """qk_norm and value embeddings are applied in the projection's layout and then take the fused CPU
    kernel (they once fell back to SDPA, 0.76-0.78x the plain block's speed); loss and every gradient equal
    the SDPA path's."""
    from tinystories.kernels import cpu as kernels

    if not kernels.attention_available():
        pytest.skip("no C compiler: the kernel cannot build here")
    ids = _ids(40)
    for kw in ({"qk_norm": True}, {"value_embeddings": True}, {"qk_norm": True, "value_embeddings": True}):
        model = _model(position=position, **kw).train()

        def loss_and_grads():
            loss = model(ids[:, :-1], ids[:, 1:])
            return loss, torch.autograd.grad(loss, list(model.parameters()))

        with torch.profiler.profile() as prof:
            fused, g_fused = loss_and_grads()
        assert any("tinystories::attention_bwd" in e.name for e in prof.events()), kw  # the kernel ran
        monkeypatch.setenv("TINYSTORIES_KERNELS", "0")
        assert not kernels.attention_available()
        sdpa, g_sdpa = loss_and_grads()
        monkeypatch.delenv("TINYSTORIES_KERNELS")
        assert abs(fused.item() - sdpa.item()) < 1e-5, kw
        for a, b in zip(g_fused, g_sdpa):
            assert (a - b).abs().max() < 1e-5, kw


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_attn_dropout_zero_leaves_the_attention_probabilities_whole(position):
    """dropout 0.5 with attn_dropout 0: the attention output, in training, is its eval output with each
    element zeroed or doubled (the residual dropout alone). With the attention probabilities dropped too,
    that no longer holds."""
    x = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(3))
    for attn_dropout, whole in ((0.0, True), (None, False), (0.5, False)):
        model = _model(dropout=0.5, attn_dropout=attn_dropout, position=position)
        attn = model.blocks[0].attn
        rope = (model.rope_cos, model.rope_sin) if position == "rope" else None
        p = Pass(start=0, masks=Masks(0, 40, "cpu", None), rope=rope)
        with torch.no_grad():
            clean = attn(x, p)
            torch.manual_seed(0)
            attn.train()
            noisy = attn(x, p)
        kept = noisy != 0
        assert 0.3 < kept.float().mean() < 0.7  # the residual dropout always acts
        assert torch.allclose(noisy[kept], 2 * clean[kept], atol=1e-5) is whole, attn_dropout


def test_attn_dropout_exports_as_gpt_neos_attention_dropout():
    from tinystories.model.hf import from_hf_config, to_hf_config

    for attn_dropout in (None, 0.0, 0.2):
        cfg = preset_config("1M", dropout=0.1, attn_dropout=attn_dropout)
        hf = to_hf_config(cfg)
        assert (hf["resid_dropout"], hf["attention_dropout"]) == (0.1, 0.1 if attn_dropout is None else attn_dropout)
        assert from_hf_config(hf).attention_dropout == cfg.attention_dropout


def test_bad_option_values_are_one_line_errors():
    with pytest.raises(UserError, match="attn_dropout"):
        ModelConfig(attn_dropout=1.0)
    with pytest.raises(UserError, match="logit_softcap"):
        ModelConfig(logit_softcap=0.0)
    with pytest.raises(UserError, match="doc_mask_token"):
        ModelConfig(vocab_size=100, doc_mask_token=100)
    with pytest.raises(UserError, match="mlp must be one of gelu, swiglu, relu2"):
        ModelConfig(mlp="relu")


def test_code_that_rewrites_the_block_refuses_options_it_does_not_implement():
    """serve's batched decoder and inspect's attention recomputation write the block's arithmetic out again;
    an option that changes it must be a one-line error there, never wrong logits or wrong attention maps."""
    from tinystories.errors import UserError
    from tinystories.inspect.capture import capture
    from tinystories.serve.engine import Engine

    for option in ({"qk_norm": True}, {"value_embeddings": True}, {"x0_mix": True}, {"logit_softcap": 15.0}):
        model = GPTNeo(preset_config("1M", vocab_size=300, hidden=32, layers=2, heads=2, **option))
        with pytest.raises(UserError, match=next(iter(option))):
            Engine(model, None, max_batch=2)
    for option in ({"qk_norm": True}, {"value_embeddings": True}):
        model = GPTNeo(preset_config("1M", vocab_size=300, hidden=32, layers=2, heads=2, **option))
        with pytest.raises(UserError, match=next(iter(option))):
            with capture(model):
                pass
    Engine(GPTNeo(preset_config("1M", vocab_size=300, hidden=32, layers=2, heads=2, mlp="relu2")), None, max_batch=2)
