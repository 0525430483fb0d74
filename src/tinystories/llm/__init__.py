"""The OpenAI-compatible client, its on-disk cache, and the judge built on it (GPT-Eval, Instruct, synth)."""
