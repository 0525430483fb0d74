"""`tinystories serve`: a model behind an OpenAI-compatible API, with a story playground at `/`."""

from __future__ import annotations

import sys

from ..serve import ServeConfig
from .command import Command, view

# The library's config is the verb's config: its fields are the flags.
ServeArgs = view(ServeConfig, positional=("model_dir",),
                 metavars={"model_dir": "MODEL_DIR", "model_name": "NAME", "max_batch": "N", "max_queue": "N",
                           "max_tokens": "N", "max_body_bytes": "N", "shutdown_timeout": "S", "threads": "N"})


def run(args: ServeConfig) -> int:
    from ..serve import default_name, serve

    def ready(url: str) -> None:
        print(f"serving {args.model_name or default_name(args.model_dir)} at {url}  "
              f"(playground: {url}/  API: {url}/v1)", flush=True)

    serve(args, ready=ready)
    print("tinystories serve: stopped", file=sys.stderr)
    return 0


COMMAND = Command(
    "serve", help="serve a model: OpenAI-compatible API and a story playground in the browser", config=ServeArgs,
    run=run,
    description="Serve MODEL_DIR (default: the model that ships in the package) at http://HOST:PORT: POST "
                "/v1/completions and /v1/chat/completions (OpenAI's format, streaming, logprobs, plus top_k, "
                "ignore_eos and the Instruct fields words/features/sentence/summary), GET /v1/models, and the "
                "playground page at /. Concurrent requests decode together in one batch.")
