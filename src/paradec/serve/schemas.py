"""Request bodies of the OpenAI API (the fields paradec honours), and the response builders.

Types are strict (``"16"`` is not an integer) so that a wrong type is a 400, as with OpenAI.
Unknown fields are ignored, as clients send many; known fields that paradec cannot honour
(logprobs, tools, penalties, ...) are refused by ``unsupported()`` rather than ignored.
Strings must be valid Unicode: JSON can spell a lone surrogate (``"\\ud800"``), which no tokenizer
and no UTF-8 response can carry, so it is a 400 here rather than a crash later.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ..constraints.spec import Constraint


def whole_characters(text: str) -> str:
    """Refuse lone surrogates (U+D800..U+DFFF), the one thing a JSON string holds that text cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the string holds a lone surrogate at position {exc.start}; send valid Unicode") from None
    return text


Str = Annotated[StrictStr, AfterValidator(whole_characters)]
Number = Annotated[float, Field(strict=True)]  # accepts 1 and 1.0, refuses "1" and true
NonEmptyStr = Annotated[Str, Field(min_length=1)]


class ParadecField(BaseModel):
    """The extra body field ``"paradec": {"method": "lookahead", "options": {...}, "timeout": 30, "view": true}``;
    ``"regex"`` or ``"grammar"`` (GBNF or Lark) constrain the output, as ``response_format`` does with JSON."""

    model_config = ConfigDict(extra="forbid")

    method: NonEmptyStr | None = None
    options: dict[Str, Any] | None = None
    timeout: Annotated[Number, Field(gt=0)] | None = None  # seconds from arrival; then the answer ends
    view: StrictBool | None = None  # keep the decoding view; the response names its URL
    regex: NonEmptyStr | None = None  # the whole output matches it
    grammar: NonEmptyStr | None = None  # the output is a sentence of it


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class GenerationRequest(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: Str | None = None  # None: the served model
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None  # extension, as in vLLM
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    stop: Str | Annotated[list[Str], Field(max_length=4)] | None = None
    n: Annotated[StrictInt, Field(ge=1)] | None = None  # choices, decoded together (seed + i for choice i)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logit_bias: dict[str, Any] | None = None
    user: Str | None = None
    paradec: ParadecField | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for the first requested feature paradec does not provide."""
        if self.presence_penalty or self.frequency_penalty:
            param = "presence_penalty" if self.presence_penalty else "frequency_penalty"
            return param, f"{param} is not supported; leave it at 0"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        return None

    def token_limit(self) -> int | None:
        return self.max_tokens

    def constraints(self) -> list[tuple[str, Constraint]]:
        """(param, constraint) of every constraint the request asks for (at most one may be given)."""
        field = self.paradec
        out = []
        if field is not None and field.regex is not None:
            out.append(("paradec.regex", Constraint.regex(field.regex)))
        if field is not None and field.grammar is not None:
            out.append(("paradec.grammar", Constraint.grammar(field.grammar)))
        return out

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


TokenIds = list[StrictInt]


class CompletionRequest(GenerationRequest):
    prompt: (
        Str
        | Annotated[list[Str], Field(min_length=1)]
        | Annotated[TokenIds, Field(min_length=1)]
        | list[TokenIds]
    )
    echo: StrictBool | None = False
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: Str | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo is not supported"
        if self.logprobs is not None:
            return "logprobs", "logprobs are not supported"
        if self.best_of not in (None, 1):
            return "best_of", "only best_of=1 is supported"
        if self.suffix:
            return "suffix", "suffix is not supported"
        batched = isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], (str, list))
        if batched and len(self.prompt) != 1:
            return "prompt", "only one prompt per request is supported"
        return super().unsupported()

    def single_prompt(self) -> str | list[int]:
        """The prompt as text or token ids (a one-element batch is unwrapped)."""
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], (str, list)):
            return self.prompt[0]
        return self.prompt


class TextPart(BaseModel):
    type: Literal["text"]
    text: Str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Str | list[TextPart] | None = None
    name: Str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: OpenAI's ``{"name", "description", "schema", "strict"}``. paradec
    enforces the schema whether ``strict`` is true or not."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: Str | None = None
    description: Str | None = None
    schema_: dict[Str, Any] | StrictBool | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self) -> Constraint | None:
        if self.type == "json_object":
            return Constraint.json_object()
        if self.type == "json_schema":
            if self.json_schema is None or self.json_schema.schema_ is None:
                raise ValueError("response_format type 'json_schema' needs json_schema.schema")
            return Constraint.json_schema(self.json_schema.schema_)
        return None


class ChatCompletionRequest(GenerationRequest):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: ResponseFormat | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.logprobs or self.top_logprobs is not None:
            return "logprobs", "logprobs are not supported"
        if self.tools or self.functions:
            return ("tools" if self.tools else "functions"), "tool calling is not supported"
        return super().unsupported()

    def constraints(self) -> list[tuple[str, Constraint]]:
        fmt = self.response_format.constraint() if self.response_format is not None else None
        return ([("response_format", fmt)] if fmt is not None else []) + super().constraints()

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def prompt_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


# ---- responses: plain dicts in the OpenAI shapes, with paradec's stats in an extra field ----

# paradec's stop reasons → OpenAI's finish_reason; a request cut by its time limit ends as "length"
# (a constraint's dead end, "constraint", is cut short too: its output does not complete the constraint)
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "deadline": "length",
                  "constraint": "length"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(rid: str, obj: str, model: str, choices: list[dict], **extra: Any) -> dict:
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        **extra,
    }


def completion_choice(text: str, finish_reason: str | None, index: int = 0) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chat_choice(text: str, finish_reason: str, index: int = 0) -> dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish_reason,
    }


def chat_delta(delta: dict, finish_reason: str | None, index: int = 0) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
