"""`tinystories export`: a model directory as a transformers GPT-Neo directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from .command import Command, Positional, arg


@dataclass
class ExportArgs:
    model_dir: Annotated[Positional[str], arg(metavar="MODEL_DIR")]
    """run or model directory, or a transformers GPT-Neo one"""
    out: Annotated[str, arg(metavar="HF_DIR")]
    """directory to write"""
    force: bool = False
    """replace HF_DIR if it exists"""


def run(args: ExportArgs) -> int:
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


COMMAND = Command(
    "export", help="write a model as a transformers GPT-Neo directory", config=ExportArgs, run=run,
    description="Write MODEL_DIR (a run/model directory, or a transformers GPT-Neo one) as a directory that "
                "transformers' AutoModelForCausalLM and AutoTokenizer load offline with from_pretrained.")
