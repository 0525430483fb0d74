"""A small client for any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama).

Used by GPT-Eval's judge, the Instruct summarizer and `synth`. Standard library only (urllib), so it
works wherever Python does. Retries with exponential backoff on 429 (honouring Retry-After),
5xx, timeouts and refused connections; a rejected key (401/403), a model the server does not know
or any other 4xx stops at once. `timeout` is a deadline for the whole reply (a server that trickles
bytes cannot hold a request forever) and a reply larger than `max_reply_bytes` is refused.
Whatever cannot be fixed by waiting becomes a one-line `UserError`.

    client = ChatClient("http://localhost:11434/v1", "llama3")       # key from $OPENAI_API_KEY, if set
    text = client.complete("Hi", temperature=0)                        # or a list of messages
    reply = client.chat("Hi")                                          # text, token usage, finish reason
    for i, text in client.map(client.complete, [[msg1], [msg2]]):      # concurrent, as they finish
        ...
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from ..errors import UserError

T = TypeVar("T")
R = TypeVar("R")

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


def chat_url(base_url: str) -> str:
    """'https://api.openai.com/v1' -> '.../v1/chat/completions'; a full endpoint URL is kept as is."""
    url = base_url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


@dataclass(frozen=True)
class Reply:
    """One chat completion: the text, and the token usage the server reported (0 when it reported none)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _Retryable(Exception):
    """A failure that waiting may fix; `wait` is the server's Retry-After, if it gave one."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.wait = wait


class ChatClient:
    """An OpenAI-compatible chat-completions client: thread-safe, with retries and a concurrency limit.

    base_url     the API root (".../v1") or the full ".../chat/completions" URL.
    model        the model name sent with each request.
    api_key_env  environment variable holding the key; if it is unset no Authorization header is sent
                 (local servers need none).
    timeout      seconds one try may take, from connecting to the reply's last byte, before retrying.
    max_retries  retries after the first try (so max_retries + 1 tries in all).
    concurrency  requests in flight at once in `map`.
    backoff      first wait in seconds; doubles each retry (with jitter), capped at `max_backoff`.
    what         how errors name this peer ("judge", "summarizer").
    max_reply_bytes  a longer reply is refused (a wrong endpoint streaming a file, not a chat completion).

    `stats` counts what happened on the wire (requests, http_429, http_5xx, timeouts, connect errors,
    malformed replies) and `usage` the tokens of every reply received: reports quote them.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 5, concurrency: int = 8, backoff: float = 1.0, max_backoff: float = 60.0,
                 what: str = "LLM", default_params: dict | None = None, max_reply_bytes: int = 4 << 20):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise UserError(f"{what} URL {base_url!r}: expected http(s)://host[:port]/v1")
        if concurrency < 1:
            raise UserError(f"{what} concurrency must be at least 1, got {concurrency}")
        self.base_url, self.url, self.model = base_url, chat_url(base_url), model
        self.api_key_env = api_key_env
        self.timeout, self.max_retries, self.concurrency = timeout, max(0, max_retries), concurrency
        self.backoff, self.max_backoff, self.what = backoff, max_backoff, what
        self.default_params = dict(default_params or {})
        self._lock = threading.Lock()
        self.max_reply_bytes = max_reply_bytes
        self.stats: Counter = Counter()   # see the class docstring
        self.usage: Counter = Counter()   # prompt_tokens, completion_tokens over all replies

    @property
    def requests_sent(self) -> int:
        """HTTP requests made, retries included (for reports and tests)."""
        return self.stats["requests"]

    # ------------------------------------------------------------ one request
    def complete(self, messages: list[Message] | str, **params) -> str:
        """The assistant's reply to `messages` (a string is one user message).

        `params` (temperature, max_tokens, ...) go into the request body, over `default_params`.
        """
        return self.chat(messages, **params).text

    def chat(self, messages: list[Message] | str, **params) -> Reply:
        """Like `complete`, with the token usage and finish reason of the reply."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body = {"model": self.model, "messages": messages, **self.default_params, **params}
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(data, headers)
            except _Retryable as e:
                last = str(e)
                if attempt == self.max_retries:
                    break
                delay = e.wait if e.wait is not None else self.backoff * 2 ** attempt * (0.5 + random.random() / 2)
                time.sleep(min(max(delay, 0.0), self.max_backoff))
        raise UserError(f"{self.what} at {self.url} failed after {self.max_retries + 1} tries ({last}); "
                        "check the URL and that the server is up, then rerun (finished work is cached)")

    def _count(self, event: str) -> None:
        with self._lock:
            self.stats[event] += 1

    def _post(self, data: bytes, headers: dict) -> Reply:
        self._count("requests")
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = self._read(resp, deadline)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except TimeoutError:
            self._count("timeouts")
            raise _Retryable(f"no reply within {self.timeout:g}s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                self._count("timeouts")
                raise _Retryable(f"no reply within {self.timeout:g}s") from None
            self._count("connect_errors")
            raise _Retryable(f"cannot connect: {e.reason}") from None
        except (ConnectionError, http.client.HTTPException) as e:
            self._count("connect_errors")
            raise _Retryable(f"connection broken: {e.__class__.__name__}") from None
        try:
            body = json.loads(raw)
            choice = body["choices"][0]
            content = choice["message"]["content"]
            usage = body.get("usage") or {}
            reply = Reply(content if isinstance(content, str) else "", int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0), choice.get("finish_reason"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            self._count("malformed")
            raise _Retryable(f"reply is not a chat completion: {raw[:80]!r}") from None
        with self._lock:
            self.usage.update(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
        return reply

    def _read(self, resp, deadline: float) -> bytes:
        """The body, in pieces, each read bounded by the time left: `timeout` holds for the whole reply, not
        per read. The socket is reached through private attributes; without it each read waits at most `timeout`."""
        sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
        chunks, size = [], 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if sock is not None:
                sock.settimeout(left)
            chunk = resp.read1(1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_reply_bytes:
                raise UserError(f"{self.what} at {self.url} sent a reply larger than {self.max_reply_bytes:,} bytes; "
                                "check that the URL is a chat-completions endpoint")
            chunks.append(chunk)

    def _http_error(self, e: urllib.error.HTTPError) -> Exception:
        """An HTTP error status as a one-line UserError, or as _Retryable when waiting may fix it."""
        detail = _error_detail(e)
        if e.code in (401, 403):
            hint = (f"${self.api_key_env} is not set" if not os.environ.get(self.api_key_env or "")
                    else f"check ${self.api_key_env}")
            return UserError(f"{self.what} at {self.url} refused the request (HTTP {e.code}{detail}); {hint}")
        if e.code == 429 or e.code >= 500 or e.code == 408:
            self._count("http_429" if e.code == 429 else "http_5xx" if e.code >= 500 else "http_408")
            return _Retryable(f"HTTP {e.code}{detail}", _retry_after(e.headers.get("Retry-After")))
        if e.code == 404 or "model" in detail.lower():
            return UserError(f"{self.what} at {self.url} does not know the model {self.model!r} "
                             f"(HTTP {e.code}{detail}); check the model name and the URL")
        return UserError(f"{self.what} at {self.url} rejected the request (HTTP {e.code}{detail}); "
                         f"check the model name {self.model!r} and the URL")

    # ------------------------------------------------------------ many requests
    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        """Run `fn(item)` for each item on `concurrency` threads; yield (index, result) as each finishes.

        `fn` is usually `self.complete` or a function that makes several calls (a conversation).
        If one raises, nothing new starts, the calls already in flight are awaited and their
        results yielded (so a caller that caches each result loses none), then the error is raised.
        """
        items = list(items)
        if not items:
            return
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(items)))
        pending: dict[Future, int] = {}
        it = iter(enumerate(items))
        error: BaseException | None = None
        try:
            def submit_next() -> None:
                for i, item in it:
                    pending[pool.submit(fn, item)] = i
                    return

            for _ in range(self.concurrency):
                submit_next()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        error = error or exc
                        continue
                    yield i, fut.result()
                    if error is None:
                        submit_next()
            if error is not None:
                raise error
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def complete_many(self, conversations: list[list[Message] | str], **params) -> list[str]:
        """Replies to many conversations, concurrently, in the order given."""
        out: list[str] = [""] * len(conversations)
        for i, text in self.map(lambda m: self.complete(m, **params), conversations):
            out[i] = text
        return out


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_detail(e: urllib.error.HTTPError) -> str:
    """': <the server's error message>' on one short line, if it sent one."""
    try:
        body = e.read().decode("utf-8", "replace")
    except Exception:
        return ""
    try:
        err = json.loads(body).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        msg = body
    msg = " ".join(str(msg or "").split())
    return f": {msg[:160]}" if msg else ""

