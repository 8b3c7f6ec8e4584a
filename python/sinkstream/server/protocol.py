"""The OpenAI request bodies the server accepts (unknown fields are refused) and the response objects."""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from .engine import Chunk, Finish, TokenInfo
from .errors import APIError, bad_request

Number = Union[StrictInt, StrictFloat]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Common(_Body):
    """Fields shared by /v1/completions and /v1/chat/completions (OpenAI's, then sinkstream's)."""

    model: StrictStr
    temperature: Optional[Number] = Field(None, ge=0, le=100)
    top_p: Optional[Number] = Field(None, gt=0, le=1)
    n: Optional[StrictInt] = Field(None, ge=1, le=1)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[StrictStr, list[StrictStr]]] = None
    presence_penalty: Optional[Number] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[Number] = Field(None, ge=-2, le=2)
    logit_bias: Optional[dict[str, Number]] = None
    seed: Optional[StrictInt] = Field(None, ge=0, lt=2**64)
    user: Optional[StrictStr] = None
    # sinkstream's own (send them with the openai client's extra_body=)
    top_k: Optional[StrictInt] = Field(None, ge=0)
    min_p: Optional[Number] = Field(None, ge=0, le=1)
    repeat_penalty: Optional[Number] = Field(None, gt=0)
    repeat_last_n: Optional[StrictInt] = Field(None, ge=0)
    session_id: Optional[StrictStr] = None


class CompletionRequest(_Common):
    prompt: Union[StrictStr, list[StrictStr], list[StrictInt]]
    max_tokens: Optional[StrictInt] = Field(16, ge=0)
    logprobs: Optional[StrictInt] = Field(None, ge=0, le=20)
    echo: Literal[False] = False
    best_of: Optional[StrictInt] = Field(None, ge=1, le=1)
    suffix: Optional[Literal[""]] = None


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[StrictStr, list[TextPart]]
    name: Optional[StrictStr] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[StrictInt] = Field(None, ge=0)
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=0)
    logprobs: StrictBool = False
    top_logprobs: Optional[StrictInt] = Field(None, ge=0, le=20)
    keep_system_prompt: Optional[StrictBool] = None  # sinkstream: the system prompt as attention sinks


def parse(model_type: type[_Body], body: Any) -> Any:
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        return model_type.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise bad_request(f"unknown field {where!r}", param=where, code="unknown_field") from None
        raise bad_request(f"{where}: {err['msg']} (got {err.get('input')!r:.60})", param=where or None,
                          code="invalid_value") from None


# -- responses -------------------------------------------------------------------------------------

FINISH = {"eos": "stop", "stop": "stop", "max_tokens": "length", "timeout": "length", "shutdown": "length",
          "closed": "length"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(finish: Finish) -> dict[str, int]:
    return {"prompt_tokens": finish.prompt_tokens, "completion_tokens": finish.completion_tokens,
            "total_tokens": finish.prompt_tokens + finish.completion_tokens}


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", "replace")


def completion_logprobs(chunks: list[Chunk], offset: int = 0) -> dict[str, Any]:
    """The legacy completions logprobs object over the tokens of these chunks."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in chunks:
        for info in chunk.tokens:
            out["tokens"].append(_text(info.piece))
            out["token_logprobs"].append(info.logprob)
            out["top_logprobs"].append({_text(p): lp for _, p, lp in info.top})
            out["text_offset"].append(offset)
            offset += len(_text(info.piece))
    return out


def chat_logprobs(chunks: list[Chunk]) -> dict[str, Any]:
    def entry(piece: bytes, logprob: float | None) -> dict[str, Any]:
        return {"token": _text(piece), "logprob": logprob, "bytes": list(piece)}

    content = []
    for chunk in chunks:
        for info in chunk.tokens:
            content.append({**entry(info.piece, info.logprob), "top_logprobs": [entry(p, lp) for _, p, lp in info.top]})
    return {"content": content, "refusal": None}


def token_info_count(chunks: list[Chunk]) -> int:
    return sum(len(c.tokens) for c in chunks)


__all__ = ["CompletionRequest", "ChatRequest", "Message", "parse", "FINISH", "new_id", "now", "usage",
           "completion_logprobs", "chat_logprobs", "TokenInfo", "APIError"]
