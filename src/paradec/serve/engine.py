"""From a parsed request to a queued generation, without HTTP.

Each request is checked in full (model name, method and options, prompt, token budget) before it
takes a place in the worker's queue. So every bad input gets an immediate 4xx and never reaches
the model.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..api import Stream, encode_prompt, stream
from ..drafters import METHODS, Drafter, make_drafter
from ..errors import ParadecError
from ..model import Model
from . import schemas as s
from .errors import APIError
from .worker import Closed, Generation, QueueFull, Worker

MAX_DRAFTERS = 8  # drafters kept for reuse, least recently used dropped first


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", "server_error", code="shutting_down")


@dataclass(frozen=True)
class ServeConfig:
    """Server settings.

    method / method_options: the default decoding method (a request may name another)
    max_queue:          requests that may wait while one runs; more get 429
    default_max_tokens: cap for chat requests without max_tokens (default: the rest of the context)
    api_key:            required as ``Authorization: Bearer KEY`` on every route but /health
    request_options:    whether a request may set method options (some, such as a draft model
                        spec, name files on this machine)
    """

    method: str = "plain"
    method_options: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    api_key: str | None = None
    max_queue: int = 32
    default_max_tokens: int | None = None
    request_options: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ParadecError(f"unknown method '{self.method}'; choose one of: {', '.join(sorted(METHODS))}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")


@dataclass
class Prepared:
    """A checked request, ready to queue: its lazy decoder and what the response reports."""

    pieces: Stream
    prompt_tokens: int
    method: str


class Engine:
    """One model, the worker that runs its generations, and the drafters reused across requests."""

    def __init__(self, model: Model, config: ServeConfig):
        self.model, self.config = model, config
        self.served = config.model_name or model.name
        self.worker = Worker(config.max_queue)
        self.vocab = model.vocab_size
        self.context = model.max_length
        self._drafters: OrderedDict[tuple[str, str], Drafter] = OrderedDict()
        self._drafters_lock = threading.Lock()

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server serves '{self.served}'",
                param="model",
                code="model_not_found",
            )

    def prepare(self, req: s.GenerationRequest, prompt: Any, chat: bool, default_limit: int | None) -> Prepared:
        """Check a request and build its decoder (blocking work: call it from a thread pool)."""
        self.check_model(req.model)
        problem = req.unsupported()
        if problem:
            raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
        drafter = self.drafter(req.paradec)
        ids = self.encode(prompt, chat)
        limit = self.token_budget(req, len(ids), default_limit, "messages" if chat else "prompt")
        try:
            pieces = stream(
                self.model,
                ids,
                drafter,
                max_new_tokens=limit,
                temperature=1.0 if req.temperature is None else req.temperature,  # OpenAI's default
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=req.top_k or 0,
                seed=req.seed,
                stop=req.stop_list(),
            )
        except ParadecError as exc:
            raise APIError(400, str(exc)) from exc
        return Prepared(pieces, len(ids), drafter.name)

    def start(self, prepared: Prepared) -> Generation:
        """Queue a prepared request; 429 when the queue is full, 503 when shutting down."""
        try:
            return Generation(self.worker, prepared.pieces)
        except QueueFull as exc:
            raise self.busy(str(exc)) from exc
        except Closed as exc:
            raise shutting_down() from exc

    def check_capacity(self) -> None:
        """Refuse early (before tokenizing) when the queue is already full; ``start`` decides for sure."""
        if self.worker.full:
            raise self.busy(f"{self.worker.capacity} requests are running or waiting")

    @staticmethod
    def busy(why: str) -> APIError:
        return APIError(
            429,
            f"the server is busy ({why}); retry later",
            "rate_limit_error",
            code="queue_full",
            headers={"Retry-After": "1"},
        )

    def drafter(self, field: s.ParadecField | None) -> Drafter:
        """The request's method (or the server's) with its options, as a drafter."""
        method = field.method if field and field.method else self.config.method
        if method not in METHODS:
            raise APIError(
                400,
                f"unknown method '{method}'; choose one of: {', '.join(sorted(METHODS))}",
                param="paradec.method",
                code="method_not_found",
            )
        options = dict(self.config.method_options) if method == self.config.method else {}
        if field and field.options:
            if not self.config.request_options:
                raise APIError(
                    400,
                    "this server does not accept method options in requests (started with --no-request-options)",
                    param="paradec.options",
                    code="unsupported_parameter",
                )
            options.update(field.options)
        try:
            return self._cached_drafter(method, options)
        except ParadecError as exc:
            raise APIError(400, str(exc), param="paradec.options") from exc

    def _cached_drafter(self, method: str, options: dict) -> Drafter:
        """One drafter per (method, options), reused by later requests. Generations run one at a time,
        so sharing is safe (``begin`` resets per-generation state), construction is paid once, and
        methods that learn across generations (Token Recycling's hot start) keep what they learnt."""
        key = (method, json.dumps(options, sort_keys=True, default=repr))
        with self._drafters_lock:
            if key not in self._drafters:
                self._drafters[key] = make_drafter(method, self.model, **options)
                if len(self._drafters) > MAX_DRAFTERS:
                    self._drafters.popitem(last=False)
            self._drafters.move_to_end(key)
            return self._drafters[key]

    def encode(self, prompt: Any, chat: bool) -> list[int]:
        param = "messages" if chat else "prompt"
        if isinstance(prompt, list) and not chat and any(not 0 <= t < self.vocab for t in prompt):
            raise APIError(400, f"token ids must be in [0, {self.vocab})", param=param)
        try:
            ids = encode_prompt(self.model, prompt, chat)
        except ParadecError as exc:
            raise APIError(400, str(exc), param=param) from exc
        if len(ids) >= self.context:
            raise APIError(
                400,
                f"this model's maximum context length is {self.context} tokens, but the prompt has {len(ids)} tokens",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    def token_budget(self, req: s.GenerationRequest, prompt_tokens: int, default: int | None, param: str) -> int:
        """max_tokens, or the default, checked against the room the prompt leaves in the context."""
        room = self.context - prompt_tokens
        limit = req.token_limit()
        if limit is None:
            return min(room, default or room)
        if limit > room:
            raise APIError(
                400,
                f"this model's maximum context length is {self.context} tokens, but you requested "
                f"{prompt_tokens + limit} tokens ({prompt_tokens} in the {param}, {limit} for the completion)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return limit

    def close(self) -> None:
        self.worker.close()
