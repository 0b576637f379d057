"""The OpenAI wire format: request schemas, value checks, error objects, response bodies.

Structure and types are checked by pydantic in strict mode (a string where a number belongs is a
422); values are checked by ``check_*`` below (out-of-range numbers, unsupported options: 400),
so every bad request gets the OpenAI error object with a status that says what was wrong.
Unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """An error the client gets as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", *,
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.headers = code, param, headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_error(e: ValidationError) -> APIError:
    """pydantic's errors as one 422 message naming the fields."""
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (and {e.error_count() - 5} more)" if e.error_count() > 5 else ""
    first = e.errors()[0]["loc"] if e.errors() else ()
    return APIError(422, "invalid request: " + "; ".join(parts) + more, code="invalid_type",
                    param=str(first[0]) if first else None)


# -- requests ----------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _GenerationRequest(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None                 # extension (vLLM, SGLang): 0 or -1 = off
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool = False                 # extension (vLLM): generate past the end of turn
    user: str | None = None


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


class TextPart(_Strict):
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: str
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    name: str | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


# -- value checks (400) ------------------------------------------------------------------------

STOP_STRINGS_MAX = 16
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code=code, param=param)


def check_common(req: _GenerationRequest, max_n: int) -> None:
    if req.temperature is not None and not 0 <= req.temperature <= 2:
        raise _bad(f"temperature must be in [0, 2], got {req.temperature}", "temperature")
    if req.top_p is not None and not 0 < req.top_p <= 1:
        raise _bad(f"top_p must be in (0, 1], got {req.top_p}", "top_p")
    if req.top_k is not None and req.top_k < -1:
        raise _bad(f"top_k must be >= -1 (-1 or 0: no top-k cut), got {req.top_k}", "top_k")
    if not 1 <= req.n <= max_n:
        raise _bad(f"n must be in [1, {max_n}], got {req.n}", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        v = getattr(req, name)
        if v not in (None, 0):
            raise _bad(f"{name} is not supported by this server (only 0)", name, "unsupported_parameter")
    stops = stop_strings(req)
    if len(stops) > STOP_STRINGS_MAX:
        raise _bad(f"at most {STOP_STRINGS_MAX} stop strings, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise _bad("stop strings must not be empty", "stop")


def check_completion(req: CompletionRequest, max_n: int) -> None:
    check_common(req, max_n)
    if req.echo:
        raise _bad("echo is not supported by this server", "echo", "unsupported_parameter")
    if req.suffix:
        raise _bad("suffix (insertion) is not supported by this server", "suffix", "unsupported_parameter")
    if req.logprobs is not None:
        raise _bad("logprobs are not supported by this server", "logprobs", "unsupported_parameter")
    if req.best_of not in (None, req.n):
        raise _bad("best_of other than n is not supported by this server", "best_of", "unsupported_parameter")


def check_chat(req: ChatCompletionRequest, max_n: int) -> None:
    check_common(req, max_n)
    if req.logprobs or req.top_logprobs:
        raise _bad("logprobs are not supported by this server", "logprobs", "unsupported_parameter")
    if req.tools:
        raise _bad("tools are not supported by this server", "tools", "unsupported_parameter")
    fmt = (req.response_format or {}).get("type", "text")
    if fmt != "text":
        raise _bad(f"response_format {fmt!r} is not supported by this server (only text)", "response_format",
                   "unsupported_parameter")
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise _bad("max_tokens and max_completion_tokens disagree; send one", "max_completion_tokens")


def stop_strings(req: _GenerationRequest) -> list[str]:
    if req.stop is None:
        return []
    return [req.stop] if isinstance(req.stop, str) else list(req.stop)


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as the tokenizer's chat template takes them."""
    out = []
    for i, m in enumerate(req.messages):
        role = CHAT_ROLES.get(m.role)
        if role is None:
            raise _bad(f"messages[{i}].role {m.role!r} is not supported (use system, user or assistant)",
                       f"messages.{i}.role")
        if isinstance(m.content, list):
            for part in m.content:
                if part.type != "text" or part.text is None:
                    raise _bad(f"messages[{i}]: only text content parts are supported, got {part.type!r}",
                               f"messages.{i}.content")
            content: str | None = "".join(p.text or "" for p in m.content)
        else:
            content = m.content
        msg: dict[str, Any] = {"role": role, "content": content}
        reasoning = m.reasoning_content if m.reasoning_content is not None else m.reasoning
        if reasoning is not None:
            msg["reasoning_content"] = reasoning
        out.append(msg)
    return out


# -- responses ---------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


Kind = Literal["completion", "chat"]
OBJECT = {("completion", False): "text_completion", ("completion", True): "text_completion",
          ("chat", False): "chat.completion", ("chat", True): "chat.completion.chunk"}


def envelope(kind: Kind, stream: bool, rid: str, created: int, model: str, choices: list[dict],
             usage_: dict | None = None, with_usage_key: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": rid, "object": OBJECT[kind, stream], "created": created, "model": model,
                            "choices": choices}
    if usage_ is not None or with_usage_key:
        body["usage"] = usage_
    return body


def reasoning_fields(reasoning: str | None) -> dict[str, str | None]:
    """Reasoning under both names clients read: ``reasoning_content`` (DeepSeek API, SGLang, older
    vLLM) and ``reasoning`` (current vLLM)."""
    return {"reasoning_content": reasoning, "reasoning": reasoning}
