"""tinystories: the TinyStories paper's whole system (Eldan & Li 2023) on one machine.

The pipeline, one module per step:
  sources / prepare -> tokenizer -> config / model -> train -> generate -> evaluate
"""

__version__ = "0.1.0"
