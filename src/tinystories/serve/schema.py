"""The request bodies the API accepts, as OpenAI defines them plus our extensions, and its error answers.

Validation is strict, as OpenAI's is: a field we do not know is refused ("Unrecognized request
argument"), a string where a number belongs is refused. Fields that OpenAI clients send but that
make no sense here (penalties, logit_bias, echo, best_of, suffix) are accepted at their neutral
value only. Extensions: `top_k`, `ignore_eos`, and the TinyStories-Instruct fields `words`,
`features`, `sentence`, `summary`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An answer in OpenAI's error format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)                 # extension
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None
    ignore_eos: bool = False                                  # extension (as vLLM's)
    words: str | list[str] | None = None                 # Instruct extension
    features: str | list[str] | None = None
    sentence: str | None = None
    summary: str | None = None
    # accepted for compatibility, at their neutral value only
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None

    def neutral_checks(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by this server; leave it at 0", param=name)
        if self.logit_bias:
            raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop: give up to 4 non-empty strings", param="stop")
        return stops

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Request):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def neutral_checks(self) -> None:
        super().neutral_checks()
        if self.echo:
            raise ApiError(400, "echo is not supported by this server", param="echo")
        if self.best_of not in (None, self.n):
            raise ApiError(400, "best_of is not supported by this server; use n", param="best_of")
        if self.suffix:
            raise ApiError(400, "suffix is not supported by this server", param="suffix")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)

    def story_start(self) -> str:
        """The last user message: the story's beginning."""
        for m in reversed(self.messages):
            if m.role == "user":
                if isinstance(m.content, list):
                    return "".join(p.text or "" for p in m.content if p.type == "text")
                return m.content or ""
        raise ApiError(400, "messages: give at least one user message (the story's beginning)", param="messages")


def parse(cls: type[_Request], body: bytes) -> _Request:
    """The request, or an ApiError naming the first field at fault."""
    try:
        req = cls.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param(err.get("loc", ()))
        if err["type"] == "json_invalid":
            raise ApiError(400, f"the request body is not valid JSON ({err['msg']})", code="invalid_json") from None
        if err["type"] == "model_type":
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json") from None
        if err["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}", param=param,
                           code="unknown_parameter") from None
        if err["type"] == "missing":
            raise ApiError(400, f"{param}: a required field is missing", param=param, code="missing_required_parameter") from None
        raise ApiError(400, f"{param}: {err['msg']}", param=param, code="invalid_value") from None
    req.neutral_checks()
    return req


def _param(loc: tuple) -> str:
    """The field a pydantic error location points at: `temperature`, `messages.0.role`. Pydantic also
    names the branch of a union it tried (`stop.list[str].0`); those parts are left out."""
    if not loc:
        return ""
    parts = [str(loc[0])]
    if loc[0] == "messages":
        parts += [str(p) for p in loc[1:3] if isinstance(p, int) or p in Message.model_fields]
    return ".".join(parts)
