"""Generation (issue 5): greedy and beam search equal transformers' generate on the same weights
(exported with our exporter), the KV cache equals full recompute, sliding past the context,
seeds, streaming, and the CLI.
"""

from __future__ import annotations

import json

import pytest
import torch

import tinystories
from conftest import TRAIN_TXT, VALID_TXT, EVAL_PROMPTS, assert_one_line_error, run_cli
from tinystories.model.config import ModelConfig, preset_config
from tinystories.generate import fast
from tinystories.generate.sampling import generate, prompt_ids, read_prompts
from tinystories.model.export import export_hf
from tinystories.model.gpt_neo import GPTNeo
from tinystories.model.modeldir import load_model, save_model
from tinystories.data.tokenizer import train_bpe

transformers = pytest.importorskip("transformers")
VOCAB = 512


def _stories(path, n):
    return [s.strip() for s in path.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()][:n]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(_stories(TRAIN_TXT, 400), VOCAB)


@pytest.fixture(scope="module")
def trained(tok, tmp_path_factory):
    """A small GPT-Neo trained for a few seconds on the shared TinyStories text.

    Each paragraph is a document here, so that the model learns to end one with
    <|endoftext|> within a few dozen tokens and the tests below meet that path.
    """
    paragraphs = [p.strip() for s in _stories(TRAIN_TXT, 800) for p in s.split("\n") if p.strip()]
    data = torch.tensor([i for ids in tok.encode_batch(paragraphs) for i in ids + [tok.eot_id]])
    # context 256 (the evaluation prompts fit), trained on 128-token windows
    cfg = ModelConfig(vocab_size=VOCAB, context=256, hidden=64, layers=2, heads=4, window=32)
    torch.manual_seed(0)
    model = GPTNeo(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    T = 128
    for _ in range(160):
        ix = torch.randint(0, len(data) - T - 1, (16,), generator=g)
        x = torch.stack([data[i:i + T] for i in ix])
        y = torch.stack([data[i + 1:i + T + 1] for i in ix])
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 5.0, loss.item()  # from ln(512) = 6.2
    d = tmp_path_factory.mktemp("trained")
    save_model(d / "model", model.eval(), tok)
    export_hf(d / "model", d / "hf")
    return d


@pytest.fixture(scope="module")
def rand(tok, tmp_path_factory):
    """A random model (context 128, local window 16) whose greedy completions run long."""
    cfg = ModelConfig(vocab_size=VOCAB, context=128, hidden=64, layers=4, heads=8, window=16)
    return _random_dir(tok, tmp_path_factory.mktemp("rand"), cfg, seed=5)


def _random_dir(tok, tmp_path, cfg: ModelConfig, seed: int):
    torch.manual_seed(seed)
    model = GPTNeo(cfg)
    with torch.no_grad():
        for p in model.parameters():  # larger than GPT-Neo's init, so that outputs are not all one token
            p.add_(torch.randn_like(p) * 0.1)
    save_model(tmp_path / "model", model.eval(), tok)
    export_hf(tmp_path / "model", tmp_path / "hf")
    return tmp_path


def _hf_generate(hf, tok, prompt: str, max_new: int, num_beams: int) -> list[tuple[list[int], float | None]]:
    ids = torch.tensor([prompt_ids(tok, prompt)])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                      num_beams=num_beams, num_return_sequences=num_beams, pad_token_id=tok.eot_id,
                      output_scores=True, return_dict_in_generate=True)
    res = []
    for j in range(num_beams):
        new = out.sequences[j, ids.size(1):].tolist()
        if tok.eot_id in new:
            new = new[:new.index(tok.eot_id)]
        res.append((new, None if num_beams == 1 else float(out.sequences_scores[j])))
    return res


def _assert_same_as_hf(d, tok, prompts, max_new, beams_list=(1, 3)):
    model, _ = load_model(d / "model")
    hf = transformers.AutoModelForCausalLM.from_pretrained(d / "hf", local_files_only=True).eval()
    finished = 0
    for nb in beams_list:
        ours = generate(model, tok, prompts, max_new_tokens=max_new, temperature=0, num_beams=nb, num_samples=nb)
        for p, comps in zip(prompts, ours):
            theirs = _hf_generate(hf, tok, p, max_new, nb)
            assert [c.tokens for c in comps] == [t for t, _ in theirs], (nb, p)
            if nb > 1:
                assert [c.score for c in comps] == pytest.approx([s for _, s in theirs], abs=1e-4)
            finished += sum(c.finish_reason == "eot" for c in comps)
    return finished


def test_greedy_and_beams_equal_transformers_on_random_models(tok, tmp_path):
    prompts = ["", "Lily and Tom went to the park. They saw a big dog and"]
    # window 8: the local layers' window matters within 40 tokens
    cfg = preset_config("1M", vocab_size=VOCAB, context=64, window=8)
    _assert_same_as_hf(_random_dir(tok, tmp_path / "a", cfg, 0), tok, prompts, 40)
    cfg = ModelConfig(vocab_size=VOCAB, context=80, hidden=48, layers=3, heads=6, attention="local", window=5)
    _assert_same_as_hf(_random_dir(tok, tmp_path / "b", cfg, 1), tok, prompts, 30, beams_list=(1, 4))


def test_greedy_and_beams_equal_transformers_on_a_trained_model(trained, tok):
    firsts = [s.split(".")[0] for s in _stories(VALID_TXT, 8)]  # first sentences of unseen stories
    finished = _assert_same_as_hf(trained, tok, ["Once upon a time"] + firsts, 48, beams_list=(1, 5))
    assert finished > 0, "no completion ended with <|endoftext|>: the eot path was not tested"


def test_kv_cache_decode_equals_full_recompute(rand, tok):
    model, _ = load_model(rand / "model")
    prompt = prompt_ids(tok, "Tom had a red ball. He")
    [[c]] = generate(model, tok, ["Tom had a red ball. He"], max_new_tokens=100, temperature=0)
    assert len(c.tokens) == 100
    seq = list(prompt)
    with torch.no_grad():
        for t in c.tokens:
            logits = model(torch.tensor([seq]))[0, -1]
            assert logits.argmax().item() == t
            seq.append(t)
    # and the cached logits themselves equal the full forward's
    ids = torch.tensor([seq[:100]])
    cache = model.new_cache(1, 100)
    with torch.no_grad():
        stepwise = [model(ids[:, :20], cache=cache)]
        stepwise += [model(ids[:, i:i + 1], cache=cache, start=i) for i in range(20, 100)]
        assert (torch.cat(stepwise, 1) - model(ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("which", ["rand", "trained"])
def test_batched_prompts_equal_one_at_a_time(which, request, tok):
    model, _ = load_model(request.getfixturevalue(which) / "model")
    prompts = ["The cat", "Once upon a time, there was a little girl named Sue. She", "", "Ben saw a bird."]
    together = generate(model, tok, prompts, max_new_tokens=30, temperature=0)
    alone = [generate(model, tok, [p], max_new_tokens=30, temperature=0)[0] for p in prompts]
    assert [c[0].tokens for c in together] == [c[0].tokens for c in alone]
    sampled = generate(model, tok, prompts, max_new_tokens=30, seed=7, num_samples=2, batch_size=3)
    sampled_alone = [generate(model, tok, [p], max_new_tokens=30, seed=7, num_samples=2)[0] for p in prompts]
    assert [[c.tokens for c in r] for r in sampled] == [[c.tokens for c in r] for r in sampled_alone]


def test_sliding_past_the_context(rand, tok):
    """Prompt + completion longer than the context: the last 3/4 of the context is fed again at
    positions 0.. and decoding goes on. Checked against a plain recompute of that rule."""
    model, _ = load_model(rand / "model")
    ctx, keep = 128, 128 - 32
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside."
    [[c]] = generate(model, tok, [prompt], max_new_tokens=300, temperature=0)
    assert len(c.tokens) == 300  # past the context twice
    window = prompt_ids(tok, prompt)
    with torch.no_grad():
        for t in c.tokens:
            assert model(torch.tensor([window]))[0, -1].argmax().item() == t
            if len(window) == ctx:
                window = window[-keep:]
            window.append(t)
    # sampling and beams slide too, and stop only at eot or the limit
    for kw in (dict(seed=1, num_samples=3), dict(num_beams=2, num_samples=2)):
        for comp in generate(model, tok, [prompt], max_new_tokens=250, **kw)[0]:
            assert comp.finish_reason == "eot" or len(comp.tokens) == 250


def test_seeds_samplers_and_streaming(trained, tok):
    model, _ = load_model(trained / "model")
    prompts = ["Sara had a doll.", "One day"]
    a = generate(model, tok, prompts, max_new_tokens=40, seed=3, num_samples=3)
    b = generate(model, tok, prompts, max_new_tokens=40, seed=3, num_samples=3)
    c = generate(model, tok, prompts, max_new_tokens=40, seed=4, num_samples=3)
    toks = lambda r: [[x.tokens for x in comps] for comps in r]  # noqa: E731
    assert toks(a) == toks(b) and toks(a) != toks(c)
    assert len({tuple(x) for x in toks(a)[0]}) > 1  # the samples differ from each other

    greedy = toks(generate(model, tok, prompts, max_new_tokens=40, temperature=0))
    assert toks(generate(model, tok, prompts, max_new_tokens=40, top_k=1, seed=5)) == greedy
    assert toks(generate(model, tok, prompts, max_new_tokens=40, top_p=1e-6, seed=5)) == greedy
    for kw in (dict(top_k=5), dict(top_p=0.5), dict(temperature=0.5, top_k=20, top_p=0.9)):
        for comps in generate(model, tok, prompts, max_new_tokens=20, seed=6, **kw):
            assert all(0 <= t < VOCAB and t != tok.eot_id for t in comps[0].tokens)

    pieces = {}
    res = generate(model, tok, prompts, max_new_tokens=40, seed=3, num_samples=3,
                   on_text=lambda i, j, s: pieces.__setitem__((i, j), pieces.get((i, j), "") + s))
    assert toks(res) == toks(a)
    assert all(pieces.get((i, j), "") == res[i][j].text for i in range(2) for j in range(3))


def test_package_level_api(trained, tok):
    model, tk = tinystories.load(trained / "model")
    [[c]] = tinystories.generate(model, tk, [""], max_new_tokens=10, temperature=0)
    assert c.text == tk.decode(c.tokens) and c.finish_reason in ("eot", "length")


def test_read_prompts_formats(tmp_path):
    assert len(read_prompts(EVAL_PROMPTS)) == 44
    (tmp_path / "p.txt").write_text("one\ntwo\n\n")
    assert read_prompts(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "q.txt").write_text("Features: Dialogue\nStory: Tom\n\nSecond prompt\n")
    assert read_prompts(tmp_path / "q.txt") == ["Features: Dialogue\nStory: Tom", "Second prompt"]
    (tmp_path / "p.json").write_text(json.dumps({"prompts": ["a", {"prompt": "b"}]}))
    assert read_prompts(tmp_path / "p.json") == ["a", "b"]
    (tmp_path / "p.jsonl").write_text('"a"\n{"prompt": "b c"}\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["a", "b c"]


def test_generate_command(trained, tok, tmp_path):
    model_dir = trained / "model"
    proc = run_cli("generate", model_dir, "Once upon a time", "--max-new-tokens", "20", "--seed", "1",
                   "--num-samples", "2", "--json", check=True)
    out = json.loads(proc.stdout)
    assert out["prompt"] == "Once upon a time" and out["prompt_tokens"] == len(tok.encode("Once upon a time"))
    assert len(out["completions"]) == 2 and out["tokens_per_s"] > 0 and out["settings"]["seed"] == 1
    assert out["new_tokens"] == sum(c["new_tokens"] + (c["finish_reason"] == "eot") for c in out["completions"])
    model, _ = load_model(model_dir)
    ref = generate(model, tok, ["Once upon a time"], max_new_tokens=20, seed=1, num_samples=2)[0]
    assert [c["text"] for c in out["completions"]] == [c.text for c in ref]

    # streamed text (the default) is the prompt and then the completion; a transformers directory works too
    proc = run_cli("generate", trained / "hf", "Once upon a time", "--max-new-tokens", "20", "--temperature", "0",
                   check=True)
    [[greedy]] = generate(model, tok, ["Once upon a time"], max_new_tokens=20, temperature=0)
    assert proc.stdout == "Once upon a time" + greedy.text + "\n"
    assert "tokens/s" in proc.stderr

    out_file = tmp_path / "stories.jsonl"
    run_cli("generate", model_dir, "--prompts", EVAL_PROMPTS, "--out", out_file, "--max-new-tokens", "8",
            "--num-beams", "2", check=True)
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["prompt"] for r in records] == read_prompts(EVAL_PROMPTS)
    assert all(len(r["completions"]) == 1 and r["completions"][0]["new_tokens"] <= 8 for r in records)
    assert_one_line_error(run_cli("generate", model_dir, "--prompts", EVAL_PROMPTS, "--out", out_file),
                          "already exists")


def test_generate_bad_input_one_line_errors(trained, tok, tmp_path):
    m = trained / "model"
    assert_one_line_error(run_cli("generate", m, "--temperature", "-0.5"), "--temperature", ">= 0")
    assert_one_line_error(run_cli("generate", m, "--top-p", "0"), "--top-p", "(0, 1]")
    assert_one_line_error(run_cli("generate", m, "--top-p", "1.5"), "--top-p", "(0, 1]")
    assert_one_line_error(run_cli("generate", m, "--top-k", "0"), "--top-k", "at least 1")
    assert_one_line_error(run_cli("generate", m, "--num-beams", "0"), "--num-beams", "at least 1")
    long_prompt = " ".join(["Lily saw a big dog."] * 60)
    assert len(prompt_ids(tok, long_prompt)) >= 256
    assert_one_line_error(run_cli("generate", m, long_prompt), "context is 256", "no room left")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert_one_line_error(run_cli("generate", m, "--prompts", empty), "holds no prompts")
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    assert_one_line_error(run_cli("generate", m, "--prompts", tmp_path / "blank.txt"), "holds no prompts")
    assert_one_line_error(run_cli("generate", tmp_path, "Once"), "not a model directory")
    assert_one_line_error(run_cli("generate", tmp_path / "nope", "Once"), "no such model directory")


def test_modern_block_generates_through_forward(tok):
    """rope / rmsnorm / swiglu models decode through `forward` (no flat path, no padding): cached greedy
    equals full recompute, prompts of different lengths batch correctly, sliding works."""
    cfg = ModelConfig(vocab_size=VOCAB, context=48, hidden=32, layers=2, heads=4, window=8,
                      position="rope", norm="rmsnorm", mlp="swiglu")
    torch.manual_seed(0)
    model = GPTNeo(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    assert fast.decode_weights(model) is None
    prompts = ["Once upon a time", "Tom", "Tom and Sue"]
    together = generate(model, tok, prompts, max_new_tokens=60, temperature=0)
    assert all(len(c.tokens) == 60 for [c] in together)  # past the context of 48: they slid
    for p, [c] in zip(prompts, together):
        assert c.tokens == generate(model, tok, [p], max_new_tokens=60, temperature=0, lookup=0)[0][0].tokens
        window = prompt_ids(tok, p)
        with torch.no_grad():
            for t in c.tokens:
                assert model(torch.tensor([window]))[0, -1].argmax().item() == t
                if len(window) == 48:
                    window = window[-36:]
                window.append(t)


@pytest.mark.parametrize("per_op", [False, True])
def test_fast_decode_paths_equal_forward(per_op):
    """generate/fast.py's flat decode (whole blocks in C for a few rows, or per op) and the CUDA-graph
    step (`decode_static`, checked here on the CPU) give `forward`'s logits, padding and window included."""
    cfg = ModelConfig(vocab_size=VOCAB, context=96, hidden=32, layers=2, heads=4, window=16)
    torch.manual_seed(3)
    model = GPTNeo(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    w = fast.decode_weights(model)
    if per_op:
        w = w._replace(layers=[layer._replace(block=None) for layer in w.layers])
    ids = torch.randint(0, VOCAB, (3, 90), generator=torch.Generator().manual_seed(0))
    pad = torch.tensor([0, 3, 10])
    with torch.inference_mode():
        full = model(ids, pad=pad)
        cache, static = model.new_cache(3, 96), model.new_cache(3, 96)
        assert (fast.decode(model, ids[:, :60], cache, 0, pad, last_only=False, weights=w) - full[:, :60]).abs().max() < 1e-4
        fast.decode(model, ids[:, :60], static, 0, pad, weights=w)
        for s in range(60, 90, 3):
            out = fast.decode(model, ids[:, s:s + 3], cache, s, pad, last_only=False, weights=w)
            assert (out - full[:, s:s + 3]).abs().max() < 1e-4
            for n in range(s, s + 3):
                one = fast.decode_static(model, ids[:, n:n + 1], static, torch.tensor(n), pad, w)
                assert (one - full[:, n]).abs().max() < 1e-4
