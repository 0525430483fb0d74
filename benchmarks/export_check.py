"""A trained model through `tinystories export` into `transformers` (issue 17): the class it loads as, the
largest logit difference, and whether greedy text is the same token for token.

    python benchmarks/export_check.py runs/10m [--prompts 5] [--max-new-tokens 100]

Exports MODEL_DIR to a temporary directory, loads it with AutoModelForCausalLM.from_pretrained (offline),
compares logits on the paper's evaluation prompts (the shared copy of 'Evaluation prompts.yaml'), then greedy-decodes each prompt
with `tinystories.generate` and with `model.generate(do_sample=False)` and prints one line per prompt and a
summary. Exits 1 if any logit differs by 1e-4 or more or any greedy text differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = Path(os.environ.get("TINYSTORIES_SHARED_DATA", REPO.parent / "shared" / "data" / "tinystories"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=100)
    args = ap.parse_args(argv)

    import torch
    import transformers

    from tinystories.evaluate.gpt_eval import load_prompts
    from tinystories.generate.sampling import generate, prompt_ids
    from tinystories.model.export import export_hf
    from tinystories.model.modeldir import load_model

    model, tok = load_model(args.model_dir)
    model.eval()
    prompts = load_prompts(SHARED / "Evaluation prompts.yaml")[:args.prompts]
    worst, same = 0.0, 0
    with tempfile.TemporaryDirectory(prefix="export-check-") as tmp:
        export_hf(args.model_dir, Path(tmp) / "hf")
        hf = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", local_files_only=True).eval()
        print(f"{args.model_dir}: exported as {type(hf).__name__}")
        for prompt in prompts:
            start = torch.tensor([prompt_ids(tok, prompt)])
            with torch.no_grad():
                diff = (hf(start).logits - model(start)).abs().max().item()
            worst = max(worst, diff)
            ours = generate(model, tok, [prompt], max_new_tokens=args.max_new_tokens, temperature=0)[0][0].tokens
            theirs = hf.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, pad_token_id=tok.eot_id)[0, start.size(1):].tolist()
            if tok.eot_id in theirs:
                theirs = theirs[:theirs.index(tok.eot_id)]
            same += ours == theirs
            print(f"  max |logit diff| {diff:.2e}, greedy {'identical' if ours == theirs else 'DIFFERENT'} "
                  f"({len(ours)} tokens): {prompt[:50]!r}")
    print(f"{same}/{len(prompts)} greedy texts identical; largest logit difference {worst:.2e}")
    return 0 if same == len(prompts) and worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
