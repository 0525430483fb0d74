"""Step 2, the model: config and presets, GPT-Neo (`gpt_neo`), model directories, `transformers` interop."""
