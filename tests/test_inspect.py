"""`tinystories inspect`: recomputed attention equals the model's, heads and neurons built by hand are
found, and the pages are well-formed, offline, and show the JSON's numbers."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import VALID_TXT, assert_one_line_error, run_cli

from tinystories.data.tokenizer import Tokenizer
from tinystories.inspect.capture import (
    attention_output,
    attention_probs,
    capture,
    mlp_activation,
)
from tinystories.model.config import ModelConfig
from tinystories.model.gpt_neo import GPTNeo
from tinystories.model.modeldir import load_model, save_model

STORY = ("One day, Lucy asks Tom: \"I am looking for a banana but I can't find it.\" Tom says: \"Don't worry, "
         "I will help you.\" Lucy and Tom go to the park.")


def _real_outputs(model, ids):
    outs = {}
    hooks = [b.attn.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o))
             for k, b in enumerate(model.blocks)]
    try:
        with torch.no_grad(), capture(model) as got:
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return outs, got


def test_recomputed_attention_is_the_models(tiny_model):
    """probs @ v through out_proj equals what each attention module really returned (a trained model,
    global and local layers), and the hooks are gone afterwards."""
    model, tok = load_model(tiny_model)
    ids = torch.tensor([[tok.eot_id] + tok.encode(STORY)])
    outs, got = _real_outputs(model, ids)
    for L in range(model.config.layers):
        p = attention_probs(model, L, got.qkv[L])
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.allclose(attention_output(model, L, got.qkv[L], p), outs[L], atol=2e-5)
    assert all(not b.attn.qkv._forward_hooks and not b.mlp.c_fc._forward_hooks for b in model.blocks)
    # the MLP activation recomputed from c_fc is what c_proj receives
    seen = {}
    h = model.blocks[0].mlp.c_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad(), capture(model, layers=[0]) as got:
        model(ids)
    h.remove()
    assert torch.allclose(mlp_activation(model.blocks[0].mlp, got.mlp_pre[0]), seen["x"], atol=1e-6)


def test_recomputed_attention_modern_block():
    """The same on the modern block (rope, RMSNorm, SwiGLU) with a local window."""
    torch.manual_seed(0)
    model = GPTNeo(ModelConfig(vocab_size=64, hidden=32, layers=2, heads=4, context=64, window=5, position="rope",
                               norm="rmsnorm", mlp="swiglu", attention=["local", "global"])).eval()
    ids = torch.randint(0, 64, (2, 30))
    outs, got = _real_outputs(model, ids)
    for L in range(2):
        p = attention_probs(model, L, got.qkv[L])
        assert torch.allclose(attention_output(model, L, got.qkv[L], p), outs[L], atol=2e-5)
    assert float(attention_probs(model, 0, got.qkv[0])[..., 10, :5].abs().max()) == 0.0  # outside the window


# ---------------------------------------------------------------- models known by construction

def _constructed(tok: Tokenizer, planted_token: int, neuron: int) -> GPTNeo:
    """One layer, 2 heads of 8. Positions are unit-circle vectors (angle pi/64 per position), so that
    LayerNorm scales every position alike; head 0's query is its position rotated one step back, so it
    attends to the previous token; head 1's query is a constant (LayerNorm's bias) that matches only
    position 0's key. MLP neuron `neuron` reads a coordinate that only `planted_token` sets."""
    C, A = 16, 1000.0
    model = GPTNeo(ModelConfig(vocab_size=tok.vocab_size, hidden=C, layers=1, heads=2, context=64,
                               attention="global"))
    th = math.pi / 64
    with torch.no_grad():
        model.wte.weight.zero_()
        model.wte.weight[:, 7] = -0.5
        model.wte.weight[:, 8] = 0.5
        model.wte.weight[planted_token, 7], model.wte.weight[planted_token, 8] = 0.5, -0.5
        pos = torch.arange(64).float() * th
        wpe = torch.zeros(64, C)
        wpe[:, 0], wpe[:, 1], wpe[:, 2], wpe[:, 3] = pos.cos(), pos.sin(), -pos.cos(), -pos.sin()
        wpe[0, 4], wpe[0, 5] = 2.0, -2.0
        model.wpe.weight.copy_(wpe)
        ln = model.blocks[0].ln_1
        ln.weight.fill_(1.0)
        ln.bias.zero_()
        ln.bias[6] = 1.0
        W = torch.zeros(3 * C, C)           # rows: q (16), k (16), v (16); head h = dims 8h..8h+7
        c, s = math.cos(th), math.sin(th)
        W[0, 0], W[0, 1], W[1, 0], W[1, 1] = A * c, A * s, -A * s, A * c   # q0 = A * R(-th) u_i
        W[C + 0, 0], W[C + 1, 1] = 1.0, 1.0                                # k0 = u_j
        W[8, 6] = 30.0                                                     # q1 = constant
        W[C + 8, 4] = 1.0                                                  # k1 = first-position flag
        W[2 * C:, :] = torch.eye(C)
        model.blocks[0].attn.qkv.weight.copy_(W)
        mlp = model.blocks[0].mlp
        mlp.c_fc.weight.normal_(0, 0.02)
        mlp.c_fc.bias.zero_()
        mlp.c_fc.weight[neuron].zero_()
        mlp.c_fc.weight[neuron, 8] = -4.0    # only the planted token has a negative 8th coordinate
        mlp.c_fc.bias[neuron] = -2.0
    return model.eval()


@pytest.fixture(scope="module")
def constructed_dir(tiny_data, tmp_path_factory):
    tok = Tokenizer.load(tiny_data)
    planted = tok.encode(" the")
    assert len(planted) == 1
    out = tmp_path_factory.mktemp("constructed") / "model"
    save_model(out, _constructed(tok, planted[0], neuron=37), tok)
    return out, planted[0]


def test_constructed_heads_are_labelled(constructed_dir, tmp_path):
    from tinystories.inspect.run import inspect_attention

    model_dir, _ = constructed_dir
    r = inspect_attention(model_dir, text=STORY, stories=5, data=str(VALID_TXT), out=tmp_path)
    prev, first = r["table"]["heads"]
    assert (prev["label"], prev["offset"]) == ("positional", 1) and prev["offset_share"] > 0.9, prev
    assert prev["label_text"] == "positional: offset 1 (previous token)"
    assert (first["label"], first["position"]) == ("positional", 0) and first["position_share"] > 0.9, first
    assert first["label_text"] == "positional: position 0 (first token)"
    assert 0.9 < prev["mean_distance"] < 1.1 and first["mean_distance"] > 20
    assert r["summary"] == {"heads": 2, "positional": 2, "semantic": 0, "offsets": [1]}


def test_planted_neuron_ranks_its_token_first(constructed_dir, tmp_path):
    from tinystories.inspect.run import inspect_neurons

    model_dir, planted = constructed_dir
    r = inspect_neurons(model_dir, stories=5, k=8, data=str(VALID_TXT), out=tmp_path)
    assert r["largest"]["neuron"] == 37 and 37 in r["shown"]
    n = r["neurons"][37]
    tok = Tokenizer.load(model_dir)
    assert [e["token"] for e in n["top"]] == [tok.decode([planted])] * 8
    assert n["role"] == "DET"  # " the" also starts "there" and "them": not every word is "the"
    assert all(e["sentence"][e["at"]] == e["token"] for e in n["top"])
    assert r["purity"]["control_mean"] < 1.0


# ---------------------------------------------------------------- pages

class Page(HTMLParser):
    """Checks nesting, collects external references, table cells and the embedded JSON."""
    VOID = frozenset({"meta", "img", "br", "hr", "input", "link"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.external, self.cells, self.data_json = [], [], [], [], None
        self._in_data = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for k in ("src", "href"):
            v = (attrs.get(k) or "").strip().lower()
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)
        if tag == "link":
            self.external.append(str(attrs))
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "script" and attrs.get("id") == "data":
            self._in_data = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()
        if tag == "script" and self._in_data is not None:
            self.data_json, self._in_data = json.loads("".join(self._in_data)), None
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._in_data is not None:
            self._in_data.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_page(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text
    p = Page()
    p.feed(text)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    assert not p.external, p.external
    return p


def test_both_verbs_on_a_trained_model(tiny_model, tmp_path):
    """Pages and JSON on a model trained by the project; every number in the page's tables is the JSON's."""
    out = tmp_path / "inspect"
    proc = run_cli("inspect", "attention", tiny_model, "--prompt", "Once upon a time", "--max-new-tokens", "20",
                   "--stories", "8", "--out", out, check=True)
    assert "positional" in proc.stdout or "semantic" in proc.stdout
    data = json.loads((out / "attention.json").read_text())
    page = parse_page(out / "attention.html")
    assert page.data_json == data
    assert data["text"]["prompt_tokens"] > 0 and len(data["text"]["tokens"]) > data["text"]["prompt_tokens"]
    assert len(data["table"]["heads"]) == 2 * 4 and data["table"]["stories"] == 8
    rows = [r for r in data["table"]["heads"]]
    for r in rows:  # each row's numbers appear, as the JSON writes them, in the page's table
        for key in ("mean_distance", "entropy", "offset_share", "position_share"):
            assert str(r[key]) in page.cells
    T = len(data["text"]["tokens"])
    assert all(len(data["text"]["probs"][L][h][q]) == q + 1 for L in range(2) for h in range(4) for q in range(T))
    assert (out / "attention.html").read_text().count("data:image/png;base64,") == 2

    from tinystories.inspect.run import (
        inspect_neurons,  # in-process: one CLI start per test is enough
    )

    inspect_neurons(tiny_model, stories=8, out=out, neurons=[3, 5])
    data = json.loads((out / "neurons.json").read_text())
    page = parse_page(out / "neurons.html")
    assert page.data_json == data
    assert data["layer"] == 1 and len(data["neurons"]) == 256 and data["shown"] == [3, 5]
    for n in data["neurons"]:
        assert str(n["purity"]) in page.cells and str(n["max"]) in page.cells
        acts = [e["activation"] for e in n["top"]]
        assert acts == sorted(acts, reverse=True) and len(acts) == 20
    for key in ("mean", "control_mean", "control_q95", "above_control_q95"):
        assert str(data["purity"][key]) in page.cells
    html_text = (out / "neurons.html").read_text()
    assert 'id="n3"' in html_text and 'id="n5"' in html_text and 'id="n7"' not in html_text


def test_hf_import_and_errors(tiny_model, tmp_path):
    """A transformers GPT-Neo directory inspects too (it needs --data: it records no training data)."""
    from tinystories.errors import UserError
    from tinystories.inspect.run import inspect_neurons
    from tinystories.model.export import export_hf

    hf = export_hf(tiny_model, tmp_path / "hf")
    with pytest.raises(UserError, match="--data"):
        inspect_neurons(hf, stories=2)
    r = inspect_neurons(hf, stories=3, layer=0, data=str(VALID_TXT), out=tmp_path / "o")
    assert r["layer"] == 0 and (tmp_path / "o" / "neurons.html").is_file()
    with pytest.raises(UserError, match="--layer 5"):
        inspect_neurons(tiny_model, layer=5, stories=2)
    with pytest.raises(UserError, match="--neurons 999"):
        inspect_neurons(tiny_model, neurons=[999], stories=2)
    # the CLI's one-line errors, before any model loads
    assert_one_line_error(run_cli("inspect", "neurons", tiny_model, "--layer", "7"), "--layer 7")
    assert_one_line_error(run_cli("inspect", "attention", tiny_model, "--text", " "), "--text")
    assert_one_line_error(run_cli("inspect", "attention", tmp_path / "nope", "--text", "hi"), "nope")


def test_memory_is_flat_in_stories(tiny_data):
    """The neuron scan holds only the stories that still hold a top-k token: with 4 neurons and k = 2,
    at most 8 of 60 stories (plus the one being read), however many are read."""
    from tinystories.inspect.neurons import scan_neurons

    tok = Tokenizer.load(tiny_data)
    torch.manual_seed(0)
    model = GPTNeo(ModelConfig(vocab_size=tok.vocab_size, hidden=16, layers=1, heads=2, context=64,
                               intermediate=4)).eval()
    from tinystories.inspect.stories import held_out_stories

    _, stories = held_out_stories(tiny_data, str(tiny_data), 60)
    r = scan_neurons(model, tok, stories, layer=0, k=2)
    assert r["stories"] == 60 and r["stories_kept_max"] <= 4 * 2 + 1
    assert len(r["neurons"]) == 4 and all(len(n["top"]) == 2 for n in r["neurons"])


def test_both_verbs_on_the_modern_block(tiny_data, tmp_path):
    """rope + RMSNorm + SwiGLU with a local layer: both verbs run, a SwiGLU neuron is silu(gate) * up."""
    from tinystories.inspect.run import inspect_attention, inspect_neurons

    tok = Tokenizer.load(tiny_data)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden=32, layers=2, heads=4, context=64, window=8, position="rope",
                      norm="rmsnorm", mlp="swiglu", attention=["local", "global"])
    save_model(tmp_path / "m", GPTNeo(cfg).eval(), tok)
    a = inspect_attention(tmp_path / "m", text=STORY, stories=3, data=str(VALID_TXT))
    local = a["text"]["probs"][0]
    assert all(sum(row[:-8]) == 0 for head in local for row in head)  # nothing outside the window of 8
    n = inspect_neurons(tmp_path / "m", layer=0, stories=3, k=4, data=str(VALID_TXT))
    assert len(n["neurons"]) == cfg.mlp_width and (tmp_path / "m" / "inspect" / "neurons.html").is_file()


def test_without_a_model_dir_the_shipped_model_is_inspected_into_the_working_directory(tmp_path):
    proc = run_cli("inspect", "attention", "--text", "Once upon a time, Tom saw a big red ball.", "--stories", 2,
                   "--data", VALID_TXT, cwd=tmp_path, check=True)
    assert "wrote inspect/attention.html" in proc.stdout
    page = json.loads((tmp_path / "inspect" / "attention.json").read_text())
    assert page["summary"]["heads"] == 4 * 4  # the shipped model: 4 layers of 4 heads
