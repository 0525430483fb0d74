"""Generation: sampling and beam search over the KV cache (`sampling`), and the fast decode paths.

`tinystories.generate(model, tokenizer, prompts, ...)` calls `sampling.generate`: importing this package
makes it callable, so the short spelling works next to `tinystories.generate.sampling`.
"""

import sys
import types

from .sampling import generate


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
