"""The OpenAI-compatible HTTP app around one loaded model: ``create_app(model, ServeConfig(...))``.

Each request is validated in full (body, model name, method, prompt length, token budget) before
it takes a place in the worker's queue, so every bad input is an immediate 4xx in the OpenAI error
shape and never reaches the model. Generation runs on the worker thread; its text pieces cross to
the event loop through an asyncio queue and leave as server-sent events or one JSON body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..api import Stream, encode_prompt, stream
from ..drafters import METHODS, Drafter, make_drafter
from ..errors import ParadecError
from ..model import Model
from . import schemas as s
from .errors import APIError, RequireKey, install_error_handlers
from .worker import Cancelled, Generation, QueueFull, Worker

log = logging.getLogger(__name__)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_DRAFTERS = 8  # drafters kept for reuse, least recently used dropped first


@dataclass(frozen=True)
class ServeConfig:
    """Server settings. ``method``/``method_options``: the default decoding method (a request may
    name another); ``max_queue``: requests that may wait while one runs (more get 429);
    ``default_max_tokens``: cap for chat requests without max_tokens (default: the rest of the
    context window); ``api_key``: required as ``Authorization: Bearer KEY`` on all but /health;
    ``request_options``: whether a request may set method options (some, such as a draft model
    spec, name files on this machine)."""

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
    """A validated request, ready to queue."""

    pieces: Stream
    prompt_tokens: int
    method: str


def create_app(model: Model, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``model``; one worker thread runs its generations one at a time."""
    config = config or ServeConfig()
    served = config.model_name or model.name
    worker = Worker(config.max_queue)
    vocab = model.hf_model.get_input_embeddings().num_embeddings
    context = model.max_length
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.close()

    app = FastAPI(title="paradec", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API for paradec: parallel decoding, same output.")
    app.state.worker = worker
    app.state.config = config

    if config.api_key is not None:
        app.add_middleware(RequireKey, key=config.api_key)
    install_error_handlers(app)

    def model_card() -> dict:
        return {"id": served, "object": "model", "created": created, "owned_by": "paradec",
                "paradec": {"methods": sorted(METHODS), "default_method": config.method, "context_length": context}}

    drafters: OrderedDict[tuple[str, str], Drafter] = OrderedDict()
    drafters_lock = threading.Lock()

    def drafter_for(method: str, options: dict) -> Drafter:
        """One drafter per (method, options), reused by later requests. Generations run one at a time,
        so sharing is safe (``begin`` resets per-generation state), construction is paid once, and
        methods that learn across generations (Token Recycling's hot start) keep what they learnt."""
        key = (method, json.dumps(options, sort_keys=True, default=repr))
        with drafters_lock:
            if key not in drafters:
                drafters[key] = make_drafter(method, model, **options)
                if len(drafters) > MAX_DRAFTERS:
                    drafters.popitem(last=False)
            drafters.move_to_end(key)
            return drafters[key]

    def prepare(req: s.GenerationRequest, prompt: Any, chat: bool, default_limit: int | None) -> Prepared:
        """Validate everything that can be validated before generation (runs in a thread pool)."""
        if req.model is not None and req.model != served:
            raise APIError(404, f"the model '{req.model}' does not exist; this server serves '{served}'",
                           param="model", code="model_not_found")
        problem = req.unsupported()
        if problem:
            raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
        options_param = "paradec.options"
        method = req.paradec.method if req.paradec and req.paradec.method else config.method
        if method not in METHODS:
            raise APIError(400, f"unknown method '{method}'; choose one of: {', '.join(sorted(METHODS))}",
                           param="paradec.method", code="method_not_found")
        options = dict(config.method_options) if method == config.method else {}
        if req.paradec and req.paradec.options and not config.request_options:
            raise APIError(400, "this server does not accept method options in requests (started with "
                           "--no-request-options)", param=options_param, code="unsupported_parameter")
        if req.paradec and req.paradec.options:
            options.update(req.paradec.options)
        try:
            drafter = drafter_for(method, options)
        except ParadecError as exc:
            raise APIError(400, str(exc), param=options_param) from exc
        prompt_param = "messages" if chat else "prompt"
        if isinstance(prompt, list) and not chat and any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"token ids must be in [0, {vocab})", param="prompt")
        try:
            ids = encode_prompt(model, prompt, chat)
        except ParadecError as exc:
            raise APIError(400, str(exc), param=prompt_param) from exc
        room = context - len(ids)
        if room <= 0:
            raise APIError(400, f"this model's maximum context length is {context} tokens, but the prompt has "
                           f"{len(ids)} tokens", param=prompt_param, code="context_length_exceeded")
        limit = req.token_limit() if isinstance(req, s.ChatCompletionRequest) else req.max_tokens
        if limit is None:
            limit = min(room, default_limit or room)
        elif limit > room:
            raise APIError(400, f"this model's maximum context length is {context} tokens, but you requested "
                           f"{len(ids) + limit} tokens ({len(ids)} in the prompt, {limit} for the completion)",
                           param="max_tokens", code="context_length_exceeded")
        temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
        try:
            pieces = stream(model, ids, drafter, max_new_tokens=limit, temperature=temperature,
                            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
                            seed=req.seed, stop=req.stop_list())
        except ParadecError as exc:
            raise APIError(400, str(exc)) from exc
        return Prepared(pieces, len(ids), drafter.name)

    def start(prepared: Prepared) -> Generation:
        try:
            return Generation(worker, prepared.pieces)
        except QueueFull as exc:
            raise APIError(429, f"the server is busy ({exc}); retry later", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from exc

    def extra(gen: Generation, prepared: Prepared) -> dict:
        stats = gen.result.stats
        return {"usage": s.usage(prepared.prompt_tokens, len(gen.result.token_ids)),
                "paradec": {"method": prepared.method, "stats": stats.to_dict()}}

    async def until_disconnect(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def run_to_end(request: Request, gen: Generation) -> str | None:
        """The whole text, or None if the client went away first (then the generation is cancelled)."""
        collect = asyncio.ensure_future(gen.text())
        gone = asyncio.ensure_future(until_disconnect(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not collect.done():
                gen.cancel()
                collect.cancel()
        if not collect.done() or collect.cancelled():
            return None
        try:
            return collect.result()
        except Cancelled:
            return None
        except Exception as exc:
            raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from exc

    def sse(data: dict | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"

    async def event_stream(gen: Generation, prepared: Prepared, req: s.GenerationRequest, chat: bool) -> AsyncIterator[str]:
        """SSE chunks: (chat: a role delta), one chunk per piece, a last chunk with finish_reason and
        paradec stats, a usage chunk if ``stream_options.include_usage``, then ``data: [DONE]``."""
        rid = s.new_id("chatcmpl" if chat else "cmpl")
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None = None, **more: Any) -> dict:
            if chat:
                delta = {} if text is None else {"content": text}
                return s.envelope(rid, obj, served, [s.chat_delta(delta, finish)], **more)
            return s.envelope(rid, obj, served, [s.completion_choice(text or "", finish)], **more)

        try:
            if chat:
                yield sse(s.envelope(rid, obj, served, [s.chat_delta({"role": "assistant", "content": ""}, None)]))
            try:
                async for piece in gen.pieces():
                    yield sse(chunk(piece))
            except Cancelled:
                return
            except Exception as exc:
                yield sse(s.error_body(f"generation failed: {type(exc).__name__}: {exc}", "server_error"))
                yield sse("[DONE]")
                return
            info = extra(gen, prepared)
            yield sse(chunk(None, s.FINISH_REASONS.get(gen.result.stats.stop_reason, "stop"), paradec=info["paradec"]))
            if req.stream_options and req.stream_options.include_usage:
                yield sse(s.envelope(rid, obj, served, [], usage=info["usage"]))
            yield sse("[DONE]")
        finally:  # also on client disconnect, when starlette cancels this generator
            gen.cancel()

    async def respond(request: Request, req: s.GenerationRequest, prompt: Any, chat: bool, default_limit: int | None) -> Response:
        prepared = await run_in_threadpool(prepare, req, prompt, chat, default_limit)
        gen = start(prepared)
        if req.stream:
            return StreamingResponse(event_stream(gen, prepared, req, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text = await run_to_end(request, gen)
        if text is None:
            return Response(status_code=499)  # client closed the request; nobody reads this
        finish = s.FINISH_REASONS.get(gen.result.stats.stop_reason, "stop")
        if chat:
            return JSONResponse(s.envelope(s.new_id("chatcmpl"), "chat.completion", served, [s.chat_choice(text, finish)], **extra(gen, prepared)))
        return JSONResponse(s.envelope(s.new_id("cmpl"), "text_completion", served, [s.completion_choice(text, finish)], **extra(gen, prepared)))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served, "running": worker.running, "queued": worker.queued}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != served:
            raise APIError(404, f"the model '{model_id}' does not exist; this server serves '{served}'",
                           param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(req: s.CompletionRequest, request: Request) -> Response:
        return await respond(request, req, req.single_prompt(), False, COMPLETION_DEFAULT_MAX_TOKENS)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: s.ChatCompletionRequest, request: Request) -> Response:
        return await respond(request, req, req.prompt_messages(), True, config.default_max_tokens)

    return app
