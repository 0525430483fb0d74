"""`tinystories inspect attention|neurons`: look inside a model, as section 5 of the paper does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from .command import Command, Positional, arg


@dataclass
class InspectArgs:
    model_dir: Annotated[Positional[str | None], arg(metavar="MODEL_DIR")] = None
    """a run/model directory, or a transformers GPT-Neo one; none: the model that ships in the package"""
    stories: Annotated[int, arg(metavar="N")] = 20
    """held-out stories to read (the paper: 20, about 8,000 tokens)"""
    data: Annotated[str | None, arg(metavar="SOURCE")] = None
    """held-out stories: a DATA_DIR (its val split) or a .txt/.json/.jsonl file; none: the val split of the
    DATA_DIR the run was trained on"""
    out: Annotated[str | None, arg(metavar="DIR")] = None
    """where the .html and .json go; none: MODEL_DIR/inspect (./inspect for the shipped model)"""
    device: str = "cpu"
    """cpu, auto, cuda, cuda:N or mps"""
    json: bool = False
    """print the raw tables as JSON on stdout"""


@dataclass
class AttentionArgs(InspectArgs):
    text: str | None = None
    """the text to show attention on"""
    prompt: str | None = None
    """a prompt instead: the model continues it greedily, and the page shows both (the prompt in bold)"""
    max_new_tokens: Annotated[int, arg(metavar="N")] = 80
    """with --prompt: tokens to generate"""


@dataclass
class NeuronsArgs(InspectArgs):
    layer: Annotated[int | None, arg(metavar="L")] = None
    """the layer; none: the last"""
    neurons: Annotated[tuple[int, ...], arg(metavar="I")] = ()
    """neurons shown on the page; none: 0, 1 and the one with the largest activation (the JSON has every
    neuron of the layer)"""
    top_k: Annotated[int, arg(metavar="K")] = 20
    """tokens kept per neuron"""
    seed: int = 0
    """seed of the shuffled control"""


def _report(args: InspectArgs, result: dict, text: str) -> int:
    import json as _json

    if args.json:
        print(_json.dumps(result))
    else:
        print(text)
        print("wrote " + " and ".join(result["files"]))
    return 0


def _use_shipped_model(args: InspectArgs) -> None:
    """No MODEL_DIR: the shipped model, with its pages in ./inspect rather than inside the installed package."""
    if args.model_dir is None:
        from ..model.shipped import shipped_model_dir

        args.model_dir, args.out = str(shipped_model_dir()), args.out or "inspect"


def run_attention(args: AttentionArgs) -> int:
    from ..inspect.run import inspect_attention

    _use_shipped_model(args)
    r = inspect_attention(args.model_dir, text=args.text, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                          stories=args.stories, data=args.data, out=args.out, device=args.device)
    s = r["summary"]
    lines = [(f"{s['heads']} heads over {r['table']['stories']} stories ({r['table']['tokens']} tokens): "
              f"{s['positional']} positional (offsets {s['offsets']}), {s['semantic']} semantic")]
    for h in r["table"]["heads"]:
        toks = " ".join(t["token"].strip() or repr(t["token"]) for t in h["top_tokens"][:5])
        lines.append(f"  layer {h['layer']} head {h['head']:>2}: {h['label_text']:<38} mean distance "
                     f"{h['mean_distance']:>6.2f}  entropy {h['entropy']:.2f}  top offset {h['offset']} "
                     f"({h['offset_share']:.2f})" + (f"  attends to: {toks}" if toks else ""))
    return _report(args, r, "\n".join(lines))


def run_neurons(args: NeuronsArgs) -> int:
    from ..inspect.run import inspect_neurons

    _use_shipped_model(args)
    r = inspect_neurons(args.model_dir, layer=args.layer, neurons=list(args.neurons) or None, stories=args.stories,
                        k=args.top_k, data=args.data, out=args.out, device=args.device, seed=args.seed)
    p = r["purity"]
    return _report(args, r, f"layer {r['layer']}: {len(r['neurons'])} neurons over {r['stories']} stories "
                            f"({r['tokens']} tokens); mean purity {p['mean']} vs shuffled control "
                            f"{p['control_mean']}; {p['above_control_q95']:.0%} of neurons above the control's "
                            f"95th percentile ({p['control_q95']}); largest activation: neuron "
                            f"{r['largest']['neuron']} ({r['largest']['activation']})")


COMMAND = Command(
    "inspect", help="attention heads and MLP neurons of a model, as HTML pages and JSON",
    subcommands=(
        Command("attention", ("every head's attention on a text (heat maps, hover) and a per-head table over "
                              "held-out stories: positional or semantic"), AttentionArgs, run_attention),
        Command("neurons", ("each MLP neuron's top tokens in their sentences, their roles and purity against a "
                            "shuffled control"), NeuronsArgs, run_neurons)))
