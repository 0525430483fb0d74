"""The HTTP side of `tinystories serve`: OpenAI's /v1/completions, /v1/chat/completions and /v1/models
on Starlette (through FastAPI), and the playground page at `/`.

Each request becomes one `Job` per prompt for the engine; the engine's events come back through an
asyncio queue, and are sent as one JSON answer or as server-sent events in OpenAI's chunk format.
A client that goes away cancels its jobs: their rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from .engine import Engine, Job, QueueFull, Sampling, ShuttingDown, TokenInfo
from .schema import ApiError, ChatRequest, CompletionRequest, parse

if TYPE_CHECKING:
    from fastapi import FastAPI


@dataclass
class Limits:
    max_tokens: int = 1024         # cap on max_tokens (the context caps it further)
    max_body_bytes: int = 1 << 20  # request bodies over this get 413
    retry_after_s: int = 1         # Retry-After on 429/503


class Served:
    """What the endpoints share: the engine, the tokenizer, the model's name and context, the limits."""

    def __init__(self, engine: Engine, name: str, limits: Limits, instruct: bool = False):
        self.engine, self.tokenizer, self.name, self.limits = engine, engine.tokenizer, name, limits
        self.context = engine.model.config.context
        self.instruct = instruct
        self.created = int(time.time())


def create_app(served: Served) -> FastAPI:
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    @asynccontextmanager
    async def lifespan(app):
        yield
        served.engine.close()  # after uvicorn's graceful drain: cancel what is left, stop the thread

    app = FastAPI(title="tinystories serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        err = ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                       code="not_found" if e.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):
        err = ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(playground_html(), headers={"Cache-Control": "no-store"})

    @app.get("/health")
    async def health():
        return served.engine.load()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(served)]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str):
        if name != served.name:
            raise unknown_model(name)
        return model_card(served)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await read_body(request, served.limits.max_body_bytes))
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise ApiError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
        return await run_request(served, request, req, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = parse(ChatRequest, await read_body(request, served.limits.max_body_bytes))
        return await run_request(served, request, req, [req.story_start()], chat=True)

    return app


def model_card(served: Served) -> dict:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "tinystories",
            "context_length": served.context, "max_tokens": min(served.limits.max_tokens, served.context - 1),
            "instruct": served.instruct}


def unknown_model(name: str) -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it passes `limit` bytes (by Content-Length, or while it streams in)."""
    def too_big(size: str) -> ApiError:
        return ApiError(413, f"the request body is {size} bytes; this server takes at most {limit}",
                        code="request_too_large")

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big(declared)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big(f"over {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------- one request

def build_jobs(served: Served, req, prompts: list[str], chat: bool, emit_for) -> list[Job]:
    """Check the request against the model and the limits; one Job per prompt."""
    if req.model != served.name:
        raise unknown_model(req.model)
    if req.n * len(prompts) > served.engine.max_batch:
        raise ApiError(400, f"n x prompts is {req.n * len(prompts)}; this server decodes at most "
                            f"{served.engine.max_batch} rows at once", param="n")
    cap = min(served.limits.max_tokens, served.context - 1)
    wanted = req.max_completion_tokens if chat and req.max_completion_tokens else req.max_tokens
    if wanted is not None and wanted > cap:
        raise ApiError(400, f"max_tokens is {wanted}; this server allows at most {cap}", param="max_tokens",
                       code="max_tokens_too_large")
    stops = req.stops()
    logprobs = (req.top_logprobs or 0) if chat and req.logprobs else (None if chat else req.logprobs)
    jobs = []
    for i, text in enumerate(prompts):
        ids = prompt_ids(served, req, text)
        if len(ids) >= served.context:
            raise ApiError(400, f"the prompt is {len(ids)} tokens (with the leading <|endoftext|>) but the model's "
                                f"context is {served.context}; shorten it", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        max_tokens = wanted if wanted is not None else min(cap, served.context - len(ids))
        if len(ids) + max_tokens > served.context:
            raise ApiError(400, f"This model's maximum context length is {served.context} tokens. However, you "
                                f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, {max_tokens} "
                                "for the completion). Please reduce the prompt or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")
        sampling = Sampling(max_tokens=max_tokens, temperature=req.temperature,
                            top_p=req.top_p if req.top_p < 1 else None, top_k=req.top_k, n=req.n, stop=stops,
                            seed=req.seed, logprobs=logprobs, ignore_eos=req.ignore_eos)
        jobs.append(Job(ids, sampling, emit_for(i)))
    return jobs


def prompt_ids(served: Served, req, text: str) -> list[int]:
    """<|endoftext|> + the prompt's tokens, as `generate` feeds them; with Instruct fields, the Instruct prompt."""
    from ..data.instruct.records import format_prompt
    from ..errors import UserError
    from ..generate.sampling import prompt_ids as ids_of

    def as_list(v) -> list[str]:
        return [w.strip() for w in (v.split(",") if isinstance(v, str) else v or []) if w.strip()]

    if any((req.words, req.features, req.sentence, req.summary)):
        try:
            text = format_prompt(words=as_list(req.words), features=as_list(req.features),
                                 sentence=(req.sentence or "").strip() or None,
                                 summary=(req.summary or "").strip() or None, story_start=text)
        except UserError as e:
            raise ApiError(400, str(e).replace("--features", "features"), param="features") from None
    return ids_of(served.tokenizer, text)


async def run_request(served: Served, request: Request, req, prompts: list[str], chat: bool):
    from fastapi.responses import JSONResponse, StreamingResponse

    queue = Inbox(asyncio.get_running_loop())

    def emit_for(i: int):
        return lambda event: queue.put((i, event))

    jobs = build_jobs(served, req, prompts, chat, emit_for)
    retry = {"Retry-After": str(served.limits.retry_after_s)}
    try:
        for job in jobs:
            served.engine.submit(job)
    except QueueFull:
        for job in jobs:
            job.cancel()
        raise ApiError(429, "the server's queue is full; retry shortly", type="rate_limit_error",
                       code="queue_full", headers=retry) from None
    except ShuttingDown:
        raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down",
                       headers=retry) from None
    out = Output(served, req, prompts, chat, sum(len(j.prompt_ids) for j in jobs))
    if req.stream:
        return StreamingResponse(stream_events(out, queue, jobs), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await collect(out, queue, jobs, request)
    finally:
        for job in jobs:
            job.cancel()
    return JSONResponse(out.whole())


class Inbox:
    """Events from the engine thread to one request's coroutine. The engine appends; the loop is woken
    once per batch of events, not once per token (a wake-up costs a syscall and a loop turn)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.ready = loop, deque(), asyncio.Event()
        self.waking = False

    def put(self, item) -> None:  # engine thread
        self.items.append(item)
        if not self.waking:
            self.waking = True
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.waking = False
        self.ready.set()

    async def get_all(self, timeout: float | None = None) -> list:
        """Every event that has arrived, waiting for at least one (or [] after `timeout`)."""
        while not self.items:
            self.ready.clear()
            if self.items:
                break
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                return []
        out = []
        while self.items:
            out.append(self.items.popleft())
        return out


async def collect(out: Output, queue: Inbox, jobs: list[Job], request: Request) -> None:
    """Wait for every choice of every job; stop paying if the client hangs up."""
    while not out.finished():
        events = await queue.get_all(timeout=1.0)
        if not events and await request.is_disconnected():
            return
        for i, event in events:
            out.take(i, event)
            if out.error:
                raise ApiError(500, out.error, type="server_error")


async def stream_events(out: Output, queue: Inbox, jobs: list[Job]) -> AsyncIterator[str]:
    try:
        opening = "".join(sse(chunk) for chunk in out.opening_chunks())
        if opening:
            yield opening
        while not out.finished():
            text = []  # the events that came together go out in one write
            for i, event in await queue.get_all():
                chunk = out.take(i, event)
                if out.error:
                    yield "".join(text) + sse(ApiError(500, out.error, type="server_error").body())
                    return
                if chunk is not None:
                    text.append(sse(chunk))
            if text:
                yield "".join(text)
        if out.req.include_usage():
            yield sse({**out.header(chunk=True), "choices": [], "usage": out.usage()})
        yield "data: [DONE]\n\n"
    finally:  # also when the client went away (Starlette cancels this generator)
        for job in jobs:
            job.cancel()


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Output:
    """The answer being built from engine events: whole (JSON) or chunk by chunk (SSE)."""

    def __init__(self, served: Served, req, prompts: list[str], chat: bool, prompt_tokens: int):
        self.served, self.req, self.prompts, self.chat = served, req, prompts, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        count = len(prompts) * req.n
        self.text = [""] * count
        self.infos: list[list[TokenInfo]] = [[] for _ in range(count)]
        self.reason: list[str | None] = [None] * count
        self.tokens = [0] * count
        self.prompt_tokens = prompt_tokens
        self.error: str | None = None

    def finished(self) -> bool:
        return all(r is not None for r in self.reason)

    def take(self, i: int, event) -> dict | None:
        kind, choice, a, b = event
        if kind == "error":
            self.error = a
            return None
        index = i * self.req.n + choice
        if kind == "text":
            start = len(self.text[index])
            self.text[index] += a
            self.infos[index] += b
            return self.chunk(index, a, b, None, start)
        self.reason[index], self.tokens[index] = a, b
        return self.chunk(index, "", [], a, len(self.text[index]))

    def header(self, chunk: bool) -> dict:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.name}

    def usage(self) -> dict:
        done = sum(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}

    def opening_chunks(self) -> list[dict]:
        if not self.chat:
            return []
        return [{**self.header(True), "choices": [{"index": k, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]}
                for k in range(len(self.text))]

    def chunk(self, index: int, text: str, infos: list[TokenInfo], reason: str | None, start: int) -> dict:
        if self.chat:
            choice = {"index": index, "delta": {"content": text} if text else {},
                      "logprobs": self.chat_logprobs(infos) if self.req.logprobs and infos else None,
                      "finish_reason": reason}
        else:
            choice = {"index": index, "text": text,
                      "logprobs": self.completion_logprobs(index, infos, start) if self.req.logprobs is not None
                      and infos else None, "finish_reason": reason}
        return {**self.header(True), "choices": [choice]}

    def whole(self) -> dict:
        choices = []
        for k, text in enumerate(self.text):
            if self.chat:
                choices.append({"index": k, "message": {"role": "assistant", "content": text},
                                "logprobs": self.chat_logprobs(self.infos[k]) if self.req.logprobs else None,
                                "finish_reason": self.reason[k]})
            else:
                choices.append({"index": k, "text": text, "finish_reason": self.reason[k],
                                "logprobs": self.completion_logprobs(k, self.infos[k], 0)
                                if self.req.logprobs is not None else None})
        return {**self.header(False), "choices": choices, "usage": self.usage()}

    def completion_logprobs(self, index: int, infos: list[TokenInfo], start: int) -> dict:
        """OpenAI's legacy form: tokens, token_logprobs, top_logprobs (text -> log-prob), text_offset."""
        base = len(self.prompts[index // self.req.n])
        offsets, at = [], base + start
        for info in infos:
            offsets.append(at)
            at += len(info.token)
        return {"tokens": [t.token for t in infos], "token_logprobs": [t.logprob for t in infos],
                "top_logprobs": [{text: lp for text, _, lp in t.top} for t in infos], "text_offset": offsets}

    @staticmethod
    def chat_logprobs(infos: list[TokenInfo]) -> dict:
        def entry(text: str, lp: float) -> dict:
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

        return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(s, lp) for s, _, lp in t.top]}
                            for t in infos]}


def playground_html() -> str:
    from importlib.resources import files

    return files("tinystories").joinpath("serve", "static", "playground.html").read_text("utf-8")
