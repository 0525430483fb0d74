"""`tinystories export`: a model directory as a transformers GPT-Neo directory."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a model as a transformers GPT-Neo directory",
                       description="Write MODEL_DIR (a run/model directory, or a transformers GPT-Neo one) as a "
                                   "directory that transformers' AutoModelForCausalLM and AutoTokenizer "
                                   "load offline with from_pretrained.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--out", required=True, metavar="HF_DIR", help="directory to write")
    p.add_argument("--force", action="store_true", help="replace HF_DIR if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..model.modeldir import check_model_dir

    check_model_dir(args.model_dir)  # fail in a moment, before torch loads
    if Path(args.out).exists() and not args.force:
        raise UserError(f"--out {args.out} already exists; pass --force to replace it")
    from ..model.export import export_hf

    out = export_hf(args.model_dir, args.out, force=args.force)
    print(f"wrote {out}: load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) "
          f"and AutoTokenizer.from_pretrained({str(out)!r})")
    return 0
