"""The OpenAI wire format of `phi4ray.serve`: request models, error bodies, logprob objects.

Pure functions and pydantic models, tested without Serve. Field names and semantics are
OpenAI's, plus the vLLM extensions that clients (PTS above all) rely on, spelled as vLLM
spells them: `return_token_ids`, `return_tokens_as_token_ids`, `stop_token_ids`, each
choice's `stop_reason`, and `stream_options.continuous_usage_stats`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

__all__ = [
    "MAX_LOGPROBS", "OpenAIError", "CompletionRequest", "ChatCompletionRequest", "ChatMessage", "StreamOptions",
    "parse_request", "finite", "token_str", "completion_logprobs", "chat_logprob_entry", "message_text",
]

MAX_LOGPROBS = 20  # vLLM's default max_logprobs

Num = Annotated[float, Field(strict=True)]
TokenIds = list[StrictInt]


class OpenAIError(Exception):
    """An error answered as OpenAI's body `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = message, status, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body(), headers=self.headers)


# -- requests ---------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    """A last chunk with `usage` for the whole request (and `choices: []`)."""
    continuous_usage_stats: StrictBool = False
    """vLLM's extension: `usage` so far on every chunk."""


class _Req(_Strict):
    model: StrictStr
    n: StrictInt = Field(1, ge=1, le=128)
    temperature: Num = Field(1.0, ge=0, le=2)
    top_p: Num = Field(1.0, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    frequency_penalty: Num = 0.0
    presence_penalty: Num = 0.0
    # vLLM extensions
    stop_token_ids: TokenIds | None = None
    return_token_ids: StrictBool = False


class CompletionRequest(_Req):
    prompt: Union[StrictStr, TokenIds, list[StrictStr], list[TokenIds]]
    max_tokens: StrictInt = Field(16, ge=1)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None
    logit_bias: dict[str, Num] | None = None
    return_tokens_as_token_ids: StrictBool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None


class ChatCompletionRequest(_Req):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)


def message_text(m: ChatMessage) -> str:
    """A message's content as text: a string, or its text parts joined (OpenAI's content parts)."""
    return m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)


def _validation_error(e: ValidationError) -> OpenAIError:
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"] if not str(x).startswith(("function-", "union["))]
    # Union members show up in the location (`prompt.str`, `prompt.list[int]`): keep the field.
    param = loc[0] if loc else None
    if err["type"] == "extra_forbidden":
        where = ".".join(loc)
        return OpenAIError(f"Unrecognized request argument supplied: {where}", param=param, code="unknown_parameter")
    where = ".".join(loc) or "body"
    return OpenAIError(f"Invalid value for '{where}': {err['msg']} (got {err.get('input')!r:.200})", param=param,
                       code="invalid_value" if err["type"] != "missing" else "missing_required_parameter")


def parse_request(model_cls: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body into `model_cls`, or raise the `OpenAIError` naming the bad field."""
    if not isinstance(body, dict):
        raise OpenAIError("The request body must be a JSON object.")
    try:
        req = model_cls.model_validate(body)
    except ValidationError as e:
        raise _validation_error(e) from None
    if req.stream_options is not None and not req.stream:
        raise OpenAIError("'stream_options' is only allowed when 'stream' is true.", param="stream_options",
                          code="invalid_value")
    return req


# -- response pieces --------------------------------------------------------------------------
def finite(x: float | None) -> float | None:
    """JSON-safe logprob: None for nan (no prefix), and -inf clamped to -9999.0 as vLLM does."""
    if x is None or math.isnan(x):
        return None
    return max(float(x), -9999.0)


def token_str(tid: int, as_ids: bool) -> str:
    if as_ids:
        return f"token_id:{tid}"
    from phi4ray.tokenizer import decode

    return decode([tid])


def completion_logprobs(
    token_ids: list[int], logprobs: list[float | None], tops: list[dict[int, float] | None] | None,
    as_ids: bool, start_offset: int = 0,
) -> dict:
    """OpenAI's completion `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset.

    `text_offset[i]` is where token i's text starts in the choice's text (from `start_offset`)."""
    from phi4ray.tokenizer import decode

    tokens = [token_str(t, as_ids) for t in token_ids]
    offsets, pos = [], start_offset
    for t in token_ids:
        offsets.append(pos)
        pos += len(decode([t]))
    top = None
    if tops is not None:
        top = [None if d is None else {token_str(k, as_ids): finite(v) for k, v in d.items()} for d in tops]
    return {"tokens": tokens, "token_logprobs": [finite(x) for x in logprobs], "top_logprobs": top,
            "text_offset": offsets}


def chat_logprob_entry(t: int, v: float, top: dict[int, float] | None, k: int) -> dict:
    """One entry of a chat choice's `logprobs.content`: the token, its logprob and bytes, and its
    `k` most likely alternatives."""
    from phi4ray.tokenizer import decode, get_encoding

    enc = get_encoding()

    def entry(tid: int, lp: float) -> dict:
        return {"token": decode([tid]), "logprob": finite(lp), "bytes": list(enc.decode_single_token_bytes(tid))}

    alts = sorted((top or {}).items(), key=lambda kv: -kv[1])[:k]
    return {**entry(t, v), "top_logprobs": [entry(a, w) for a, w in alts]}
