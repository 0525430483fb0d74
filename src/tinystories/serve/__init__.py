"""`tinystories serve`: a model behind an OpenAI-compatible HTTP API, with a story playground at `/`.

    from tinystories.serve import ServeConfig, serve
    serve(ServeConfig(model_dir="runs/8M", port=8000))

Modules: `engine` (the batched decode loop), `schema` (request bodies and errors), `app` (the
endpoints and the page), `static/playground.html` (the page: one file, no build step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import UserError


@dataclass
class ServeConfig:
    model_dir: str | None = None
    """run/model directory (default: the model that ships in the package)"""
    host: str = "127.0.0.1"
    """address to listen on"""
    port: int = 8000
    """port (0 = any free port; the URL is printed)"""
    model_name: str | None = None
    """the model id clients send as `model` (default: the directory's name)"""
    max_batch: int = 64
    """rows decoded together; more requests wait in the queue"""
    max_queue: int = 256
    """requests that may wait; more get 429 with Retry-After"""
    max_tokens: int = 1024
    """largest max_tokens a request may ask for (the model's context caps it too)"""
    max_body_bytes: int = 1 << 20
    """largest request body; larger ones get 413"""
    shutdown_timeout: float = 30.0
    """on SIGTERM/SIGINT, seconds in-flight requests get to finish before they are cancelled"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """weights and activations"""
    threads: int | None = None
    """torch threads for decoding (default: one less than the cores, which leaves one to the HTTP side)"""

    def check(self) -> None:
        for name in ("max_batch", "max_queue", "max_tokens", "max_body_bytes", "threads"):
            if name == "threads" and self.threads is None:
                continue
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        if self.dtype not in ("fp32", "bf16"):
            raise UserError(f"--dtype must be fp32 or bf16, got {self.dtype}")
        if not self.shutdown_timeout >= 0 or self.shutdown_timeout == float("inf"):  # also NaN
            raise UserError(f"--shutdown-timeout must be a number of seconds >= 0, got {self.shutdown_timeout}")


def default_name(model_dir: str | None) -> str:
    if model_dir is None:
        return "tinystories-shipped"
    return Path(model_dir).resolve().name or "model"


def serve(cfg: ServeConfig, ready=None) -> None:
    """Load the model, bind the port, serve until SIGINT/SIGTERM (in-flight requests get
    `shutdown_timeout` seconds to finish, then are cancelled). `ready(url)` is called once listening."""
    import signal
    import socket

    from ..model.modeldir import check_model_dir
    from ..model.shipped import shipped_model_dir

    cfg.check()  # option and model errors in a moment, before torch loads
    model_dir = cfg.model_dir or str(shipped_model_dir())
    check_model_dir(model_dir)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
        sock.listen(2048)  # from now on connections wait in the backlog, so "serving at URL" is true at once
    except OSError as e:
        raise UserError(f"--host {cfg.host} --port {cfg.port}: cannot listen there ({e.strerror}); "
                        "pick another port (0 = any free one)") from None
    import torch
    import uvicorn

    from ..model.modeldir import load_model
    from ..runtime.device import physical_cores, resolve_device
    from .app import Limits, Served, create_app
    from .engine import Engine

    # The event loop (JSON, SSE writes) needs a core of its own: on 2 cores at load ~13, 16 clients got
    # 1,041 tokens/s with 1 decoding thread and 385 with 2 (benchmarks/serve_load.py).
    torch.set_num_threads(cfg.threads or max(1, physical_cores() - 1))
    model, tok = load_model(model_dir, resolve_device(cfg.device),
                            torch.bfloat16 if cfg.dtype == "bf16" else torch.float32)
    engine = Engine(model, tok, max_batch=cfg.max_batch, max_queue=cfg.max_queue)
    served = Served(engine, cfg.model_name or default_name(cfg.model_dir),
                    Limits(max_tokens=cfg.max_tokens, max_body_bytes=cfg.max_body_bytes),
                    instruct=_looks_instruct(model_dir))
    server = uvicorn.Server(uvicorn.Config(create_app(served), log_level="warning",
                                           timeout_graceful_shutdown=cfg.shutdown_timeout))
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if ready is not None:
        ready(url)
    # uvicorn drains, then raises the signal again under the handlers it found: ours only note it,
    # so that a SIGTERM'd server exits 0 after finishing its requests instead of dying by the signal
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _looks_instruct(model_dir: str) -> bool:
    """Whether the model was trained on Instruct records (its run's data dir says so): the page then
    opens its Instruct fields. A guess only; the fields work with any model."""
    import json

    for name in ("train_config.json",):
        path = Path(model_dir) / name
        if path.is_file():
            try:
                data = json.loads(path.read_text()).get("data", "")
            except (ValueError, AttributeError):
                return False
            return "instruct" in str(data).lower()
    return False
