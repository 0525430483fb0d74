"""Speed, in one run on this machine: training and generation next to transformers, tokenizer
throughput, training memory.

    python benchmarks/run.py                 # everything (about 6 minutes on 2 CPU cores)
    python benchmarks/run.py --quick         # fewer repeats, shorter generations
    python benchmarks/run.py --only train    # or: generate, tokenizer, memory (comma-separated)
    python benchmarks/run.py --json out.json # the numbers as JSON too

Training: one optimizer step (forward, backward, clipping, AdamW) on batch 8 x 512, vocab 10K,
16 heads, for the 1M, 8M and 33M shapes: ours as `tinystories train` runs it (compile=auto, fused
CPU kernels) in fp32 and in bf16, and what precision=auto picks for that shape (its own measurement,
cached per machine); transformers' GPTNeoForCausalLM and a plain nanoGPT-style PyTorch GPT
(benchmarks/baselines.py), each in both precisions, reported in its faster one. All interleaved,
so that a busy machine slows all alike; tokens/s is the median. MFU = model FLOPs (6 x matmul
weights + causal/windowed attention) x tokens/s over the matrix-product peak of the precision
each uses, measured in the same run (bf16 only where the CPU has bf16 instructions, or on a GPU).

Generation: greedy, single prompt, on the same weights for ours and transformers' `generate`;
the tokens must be identical. Where bf16 is timed, ours also decodes a bf16 copy (`generate --dtype
bf16`): its default (drafts) must give its one-token-per-pass tokens exactly, and those follow fp32's
up to a near tie (README), so the table says on how many prompts they equal transformers'. On models
TRAINED here (cached in ~/.cache/tinystories/bench, built on the first run: about 10 minutes on 2
CPU cores), because random weights repeat themselves, which flatters drafting; random weights are
reported too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinystories.model.config import ModelConfig, preset_config
from tinystories.model.gpt_neo import GPTNeo
from tinystories.train.config import TrainConfig
from tinystories.train.optim import make_optimizer
from tinystories.runtime.device import cpu_has_bf16, keep_freed_memory, physical_cores, resolve_precision
from tinystories.train.precision import choose_precision

SHARED = ROOT.parent / "shared" / "data" / "tinystories"
TRAIN_FILES = ["TinyStories-train-head.txt", "TinyStoriesV2-GPT4-train-head.txt", "tinystories-sample-3000.json"]
VALID_FILE = "TinyStories-subset-valid.txt"
SHAPES = ["1M", "8M", "33M"]
B, T = 8, 512
# the cached generation models: optimizer steps of batch 8 x 512 and peak learning rate (built once;
# about 10 minutes on 2 CPU cores)
GEN_MODEL_STEPS = {"1M": (120, 3e-3), "8M": (60, 2e-3), "33M": (40, 1.5e-3)}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- machine

def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        info["cpu_flags"] = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                                     if f in fields.get("Flags", "").split())
    except OSError:
        info["cpu"] = platform.processor()
    info["physical_cores"] = physical_cores()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s of a large square matrix product: the ceiling MFU is measured against."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(8 if device.type == "cuda" else 6):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_flops_per_token(cfg: ModelConfig, T: int) -> float:
    """Model FLOPs of one training token: 6 x matmul weights (head included, embeddings not) plus
    attention's QK and PV products over the keys each query may see, times 3 for the backward."""
    C, F = cfg.hidden, cfg.mlp_width
    weights = cfg.layers * (4 * C * C + 2 * C * F) + cfg.vocab_size * C
    attn = 0.0
    for kind in cfg.layer_types:
        keys = [min(i + 1, cfg.window) if kind == "local" else i + 1 for i in range(T)]
        attn += 3 * 4 * C * sum(keys) / T
    return 6 * weights + attn


# ----------------------------------------------------------------------------------- training

def _stepper(loss_of, model, opt, device, precision: str):
    """One training step as train.py takes it: autocast forward, backward, clipping, AdamW; the loss and
    the gradient norm are read back every step (train.py logs both)."""
    dtype = AUTOCAST[precision]

    def step(x, y):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_of(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item(), norm.item()
    return step


def _ours_trainer(cfg: ModelConfig, device, precision: str):
    torch.manual_seed(0)
    model = GPTNeo(cfg).to(device)
    opt = make_optimizer(model, TrainConfig(data="-", out="-", max_steps=1), device)
    use_compile = device.type == "cuda"  # compile=auto on a long run: on for CUDA, off on a CPU (measured)
    fwd = torch.compile(model) if use_compile else model
    return _stepper(fwd, model, opt, device, precision)


def _hf_model(cfg: ModelConfig, ours: GPTNeo | None = None):
    import transformers

    from tinystories.model.hf import to_hf_config, to_hf_state

    hc = to_hf_config(cfg)
    for k in ("architectures", "model_type", "torch_dtype"):
        hc.pop(k, None)
    hc.update(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(**hc))
    if ours is not None:
        missing, unexpected = hf.load_state_dict(to_hf_state(ours), strict=False)
        assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
        hf.tie_weights()
    return hf


def _hf_trainer(cfg: ModelConfig, device, precision: str):
    torch.manual_seed(0)
    hf = _hf_model(cfg).to(device).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, weight_decay=0.1)
    # transformers shifts the labels itself
    return _stepper(lambda x, y: hf(input_ids=x, labels=x).loss, hf, opt, device, precision)


def _nanogpt_trainer(cfg: ModelConfig, device, precision: str):
    from baselines import PlainGPT

    torch.manual_seed(0)
    model = PlainGPT(cfg.vocab_size, cfg.context, cfg.hidden, cfg.layers, cfg.heads).to(device)
    opt = model.optimizer(device_type=device.type)
    fwd = torch.compile(model) if device.type == "cuda" else model  # nanoGPT compiles by default (not on CPUs)
    return _stepper(fwd, model, opt, device, precision)


TRAINERS = {"ours": _ours_trainer, "transformers": _hf_trainer, "nanoGPT-style": _nanogpt_trainer}


def precisions(device) -> list[str]:
    """The precisions worth timing here: bf16 needs a GPU or a CPU with bf16 instructions."""
    if device.type == "cuda":
        return ["fp32", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["fp32", "bf16"] if device.type == "cpu" and cpu_has_bf16() else ["fp32"]


def bench_training(shapes, device, peaks: dict[str, float], reps: int) -> list[dict]:
    rows = []
    for shape in shapes:
        cfg = preset_config(shape)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, cfg.vocab_size, (B, T), generator=g).to(device)
        y = torch.randint(0, cfg.vocab_size, (B, T), generator=g).to(device)
        # precision=auto's own decision for this shape (measured once per machine, then cached)
        auto = choose_precision("auto", cfg, B, T, device).precision
        steps = {(name, p): make(cfg, device, p) for name, make in TRAINERS.items() for p in peaks}
        times = {key: [] for key in steps}
        warm = {}
        for key, step in steps.items():  # warm-up: allocation, kernel choice, compilation
            t = time.perf_counter()
            for _ in range(3 if device.type == "cuda" else 1):
                step(x, y)
            _sync(device)
            warm[key] = time.perf_counter() - t
        for _ in range(reps):
            for key, step in steps.items():
                _sync(device)
                t = time.perf_counter()
                step(x, y)
                _sync(device)
                times[key].append(time.perf_counter() - t)
        flops = train_flops_per_token(cfg, T)
        tps = {key: B * T / statistics.median(v) for key, v in times.items()}
        # ours in every precision and as auto runs it; each baseline in its faster precision
        cols = {f"ours {p}": ("ours", p) for p in peaks}
        cols["ours (auto)"] = ("ours", auto)
        for name in TRAINERS:
            if name != "ours":
                cols[name] = max(((name, p) for p in peaks), key=tps.get)
        rows.append({"shape": shape, "flops_per_token": flops, "auto": auto,
                     "precision": {c: k[1] for c, k in cols.items()},
                     "tokens_per_s": {c: tps[k] for c, k in cols.items()},
                     "mfu": {c: tps[k] * flops / peaks[k[1]] for c, k in cols.items()},
                     "all_tokens_per_s": {f"{n} {p}": v for (n, p), v in tps.items()},
                     "warmup_s": {f"{n} {p}": v for (n, p), v in warm.items()},
                     "spread": {f"{n} {p}": (B * T / max(v), B * T / min(v)) for (n, p), v in times.items()}})
        log(f"  train {shape}: " + ", ".join(f"{n} {p} {v:,.0f} tok/s" for (n, p), v in tps.items())
            + f"; auto picked {auto}")
        del steps
    return rows


# ----------------------------------------------------------------------------------- memory

def _memory_child(kind: str, shape: str, device_name: str) -> None:
    """(in a fresh process) peak memory of training `shape` at batch 8 x 512, printed as JSON."""
    device = torch.device(device_name)
    base = _rss_mb()
    precision = resolve_precision("auto", device)
    step = TRAINERS[kind](preset_config(shape), device, precision)
    x = torch.randint(0, 10_000, (B, T), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step(x, x)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mb() - base
    print(json.dumps({"peak_mb": peak}))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from the
    parent across fork and exec, so every child would report the benchmark process's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_memory(shape: str, device) -> dict:
    out = {}
    for kind in TRAINERS:
        r = subprocess.run([sys.executable, __file__, "--_memory", kind, shape, str(device)],
                           capture_output=True, text=True)
        try:
            out[kind] = json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"]
        except (IndexError, ValueError, KeyError):
            out[kind] = None
            log(f"  memory {kind}: failed: {r.stderr.strip().splitlines()[-1:]}")
    log(f"  memory {shape}: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in out.items() if v is not None))
    return out


# ----------------------------------------------------------------------------------- generation

def _cache_dir() -> Path:
    env = os.environ.get("TINYSTORIES_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinystories"
    return base / "bench"


def bench_data() -> Path:
    """The shared training files prepared with a 10K BPE (cached)."""
    from tinystories.data.prepare import prepare

    d = _cache_dir() / "data-bpe10k"
    if not (d / "meta.json").is_file():
        log(f"  preparing {d} (once)")
        prepare([SHARED / f for f in TRAIN_FILES], d, vocab_size=10_000, val=[SHARED / VALID_FILE], force=True)
    return d


def trained_model(shape: str):
    """A model of `shape` trained here for GEN_MODEL_STEPS steps (cached)."""
    import tinystories
    from tinystories.train.loop import train

    steps, lr = GEN_MODEL_STEPS[shape]
    d = _cache_dir() / f"gen-{shape}-{steps}steps"
    if not (d / "summary.json").is_file():
        log(f"  training the {shape} generation model for {steps} steps (once; cached in {d})")
        shutil.rmtree(d, ignore_errors=True)  # an interrupted earlier attempt
        env = os.environ.get("TINYSTORIES_QUIET")
        os.environ["TINYSTORIES_QUIET"] = "1"
        try:
            train(TrainConfig(data=str(bench_data()), out=str(d), preset=shape, max_steps=steps, lr=lr,
                              warmup_steps=10, eval_every=0, checkpoint_every=0, samples=0), force=True)
        finally:
            if env is None:
                os.environ.pop("TINYSTORIES_QUIET", None)
    model, tok = tinystories.load(d)
    return model, tok, json.loads((d / "summary.json").read_text())


def _prompts(n: int) -> list[str]:
    import yaml

    items = yaml.safe_load((SHARED / "Evaluation prompts.yaml").read_text())
    items = [i["prompt"] if isinstance(i, dict) else i for i in items]
    return [p for p in items if len(p) < 400][:n]


def bench_generation(shapes, device, new_tokens: int, reps: int, n_prompts: int, trained: bool) -> list[dict]:
    from tinystories.generate.sampling import generate, prompt_ids
    from tinystories.data.tokenizer import train_bpe

    prompts = _prompts(n_prompts)
    rows = []
    for shape in shapes:
        if trained:
            ours, tok, summary = trained_model(shape)
        else:
            texts = (SHARED / TRAIN_FILES[0]).read_text(encoding="utf-8").split("<|endoftext|>")
            tok, summary = train_bpe(texts[:2000], 10_000), {}
            torch.manual_seed(0)
            ours = GPTNeo(preset_config(shape)).eval()
        ours = ours.to(device).eval()
        hf = _hf_model(ours.config, ours).to(device).eval()
        eot = tok.eot_id
        ids = [torch.tensor([prompt_ids(tok, p)], device=device) for p in prompts]

        def run_hf():
            out = []
            for i in ids:
                seq = hf.generate(i, attention_mask=torch.ones_like(i), max_new_tokens=new_tokens, do_sample=False,
                                  num_beams=1, pad_token_id=eot, eos_token_id=eot)[0, i.size(1):].tolist()
                out.append(seq[:seq.index(eot)] if eot in seq else seq)
            return out

        def run_ours(model=ours, **kw):
            return lambda: [generate(model, tok, [p], max_new_tokens=new_tokens, temperature=0, **kw)[0][0].tokens
                            for p in prompts]

        contenders = {"transformers": run_hf, "ours, 1 token/pass": run_ours(lookup=0, draft="off"),
                      "ours (default)": run_ours()}
        if "bf16" in precisions(device):  # `generate --dtype bf16`: bf16 weights, read half the bytes
            bf = copy.deepcopy(ours).to(torch.bfloat16)
            contenders.update({"ours bf16, 1 token/pass": run_ours(bf, lookup=0, draft="off"),
                               "ours bf16 (default)": run_ours(bf)})
        outputs, times = {}, {k: [] for k in contenders}
        with torch.inference_mode():
            for name, f in contenders.items():
                outputs[name] = f()
            for _ in range(reps):
                for name, f in contenders.items():
                    _sync(device)
                    t = time.perf_counter()
                    f()
                    _sync(device)
                    times[name].append(time.perf_counter() - t)
        n = sum(map(len, outputs["transformers"]))
        # fp32 must match transformers token for token; bf16 follows fp32 up to a near tie (README)
        same = (all(o == outputs["transformers"] for k, o in outputs.items() if "bf16" not in k)
                and outputs.get("ours bf16 (default)") == outputs.get("ours bf16, 1 token/pass"))
        bf16_same = (sum(a == b for a, b in zip(outputs["ours bf16, 1 token/pass"], outputs["transformers"]))
                     if "ours bf16, 1 token/pass" in outputs else None)
        tps = {k: n / statistics.median(v) for k, v in times.items()}
        rows.append({"shape": shape, "trained": trained, "tokens": n, "identical": same, "tokens_per_s": tps,
                     "bf16_same_prompts": bf16_same, "prompts": len(prompts),
                     "val_loss": summary.get("val_loss"), "sample": tok.decode(outputs["transformers"][0])[:160]})
        log(f"  generate {shape} ({'trained' if trained else 'random'}): "
            + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in tps.items()) + f"; identical: {same}")
    return rows


# ----------------------------------------------------------------------------------- tokenizer

def bench_tokenizer() -> dict:
    from tinystories.data.sources import iter_stories
    from tinystories.data.tokenizer import gpt_neo_tokenizer, train_bpe

    stories = [s for f in TRAIN_FILES for s in iter_stories(str(SHARED / f))]
    nbytes = sum(len(s.encode()) for s in stories)
    t = time.perf_counter()
    tok = train_bpe(stories, 10_000)
    train_s = time.perf_counter() - t
    val = list(iter_stories(str(SHARED / VALID_FILE)))
    vbytes = sum(len(s.encode()) for s in val)
    out = {"train_mb": nbytes / 1e6, "train_mb_per_s": nbytes / 1e6 / train_s, "encode_mb": vbytes / 1e6}
    for name, tk in (("bpe10k", tok), ("gpt-neo", gpt_neo_tokenizer())):
        tk.encode_batch(val[:100])
        t = time.perf_counter()
        tk.encode_batch(val)
        out[f"encode_{name}_mb_per_s"] = vbytes / 1e6 / (time.perf_counter() - t)
    log(f"  tokenizer: train {out['train_mb_per_s']:.2f} MB/s, encode {out['encode_bpe10k_mb_per_s']:.1f} MB/s")
    return out


# ----------------------------------------------------------------------------------- report

def report(res: dict) -> str:
    m = res["machine"]
    lines = [f"machine: {m.get('cpu', '?')} ({m['physical_cores']} cores, {m.get('cpu_flags', '')})"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "")
             + f"; torch {m['torch']}, {m['threads']} threads; device {res['device']}"
             + (f"; load average {res['load'][0]:.2f} before, {res['load'][1]:.2f} after" if res.get("load") else ""),
             "matmul peak measured: " + ", ".join(f"{v / 1e9:,.0f} GFLOP/s {p}" for p, v in res["peaks"].items()), ""]
    if "train" in res:
        names = list(res["train"][0]["tokens_per_s"])
        lines += ["Training, batch 8 x 512, one optimizer step (tokens/s, MFU against the peak of the precision "
                  "used; baselines in their faster precision; ratio = ours (auto) / other):", "",
                  "| shape | GFLOP/token | " + " | ".join(names) + " | ours / transformers | ours / nanoGPT-style |",
                  "|---|---|" + "---|" * len(names) + "---|---|"]
        for r in res["train"]:
            t, u, p = r["tokens_per_s"], r["mfu"], r["precision"]
            ours = t["ours (auto)"]
            lines.append(f"| {r['shape']} | {r['flops_per_token'] / 1e9:.3f} | "
                         + " | ".join(f"{t[n]:,.0f} ({u[n]:.0%}{'' if n.startswith('ours ') and n != 'ours (auto)' else ', ' + p[n]})"
                                      for n in names)
                         + f" | {ours / t['transformers']:.2f}x | {ours / t['nanoGPT-style']:.2f}x |")
        lines += ["", "precision=auto against the better of ours fp32 and ours bf16 (issue 16: never more than 5% slower):",
                  "", "| shape | auto picked | auto tokens/s | best tokens/s | auto / best |", "|---|---|---|---|---|"]
        for r in res["train"]:
            t = r["tokens_per_s"]
            best = max(v for n, v in t.items() if n.startswith("ours ") and n != "ours (auto)")
            lines.append(f"| {r['shape']} | {r['auto']} | {t['ours (auto)']:,.0f} | {best:,.0f} | "
                         f"{t['ours (auto)'] / best:.1%} |")
        lines.append("")
    if "memory" in res:
        mem = res["memory"]
        lines += ["Peak training memory, 33M at batch 8 x 512 (fp32 weights, grads, AdamW, activations; peak RSS above the process after imports): "
                  + ", ".join(f"{k} {v:,.0f} MB" for k, v in mem.items() if v is not None), ""]
    for key, title in (("generate_trained", "trained here"), ("generate_random", "random")):
        if key not in res:
            continue
        names = list(res[key][0]["tokens_per_s"])
        lines += [f"Greedy generation, single prompt, weights {title} (tokens/s; ratio to transformers):", "",
                  "| shape | " + " | ".join(names) + " | identical output |", "|---|" + "---|" * len(names) + "---|"]
        for r in res[key]:
            t = r["tokens_per_s"]
            lines.append(f"| {r['shape']}" + (f" (val loss {r['val_loss']:.2f})" if r.get("val_loss") else "") + " | "
                         + " | ".join(f"{t[n]:,.0f}" + ("" if n == "transformers" else f" ({t[n] / t['transformers']:.2f}x)")
                                      for n in names)
                         + f" | {'yes' if r['identical'] else 'NO'} ({r['tokens']} tokens)"
                         + (f"; bf16: {r['bf16_same_prompts']} of {r['prompts']} prompts" if r.get("bf16_same_prompts") is not None else "")
                         + " |")
        lines.append("")
    if "tokenizer" in res:
        k = res["tokenizer"]
        lines += [f"Tokenizer: BPE 10K trained on {k['train_mb']:.1f} MB at {k['train_mb_per_s']:.2f} MB/s; encoding "
                  f"{k['encode_mb']:.1f} MB: {k['encode_bpe10k_mb_per_s']:.1f} MB/s (BPE 10K), "
                  f"{k['encode_gpt-neo_mb_per_s']:.1f} MB/s (GPT-Neo)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and shorter generations")
    ap.add_argument("--only", default="train,memory,generate,tokenizer",
                    help="comma-separated sections: train, memory, generate, tokenizer")
    ap.add_argument("--shapes", nargs="+", default=SHAPES)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from tinystories.runtime.device import resolve_device

    if args._memory:
        _memory_child(*args._memory)
        return
    device = resolve_device(args.device)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(physical_cores())  # as `tinystories train` does
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    only = set(args.only.split(","))
    t0 = time.time()
    res = {"machine": machine(), "device": str(device), "load": [os.getloadavg()[0]],
           "peaks": {p: matmul_peak(device, DTYPES[p]) for p in precisions(device)}}
    log("matmul peak " + ", ".join(f"{v / 1e9:,.0f} GFLOP/s {p}" for p, v in res["peaks"].items()))
    reps = 3 if args.quick else 5
    if device.type == "cpu":
        # as `tinystories train` does on a CPU (runtime.device.keep_freed_memory). It is process-wide, so
        # transformers and the nanoGPT-style baseline, timed in this process, reuse freed memory too: the
        # ratios below do not credit ours with it.
        res["keep_freed_memory"] = keep_freed_memory()
    if "train" in only:
        res["train"] = bench_training(args.shapes, device, res["peaks"], reps)
    if "memory" in only:
        res["memory"] = bench_memory("33M", device)
    if "generate" in only:
        new = 64 if args.quick else 128
        res["generate_trained"] = bench_generation(args.shapes, device, new, reps, 3, trained=True)
        res["generate_random"] = bench_generation(args.shapes, device, new, max(2, reps - 2), 1, trained=False)
    if "tokenizer" in only:
        res["tokenizer"] = bench_tokenizer()
    res["seconds"] = time.time() - t0
    res["load"].append(os.getloadavg()[0])
    print(report(res))
    print(f"({res['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
