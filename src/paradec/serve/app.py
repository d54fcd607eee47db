"""The OpenAI-compatible HTTP app around one loaded model: ``create_app(model, ServeConfig(...))``.

Requests pass the gates of ``guards.py`` (Host header, API key, body size), then are checked and
queued by the ``Engine``. Generation runs in the worker thread's continuous batch, and its text
pieces cross to the event loop through an asyncio queue. They leave as server-sent events or as one JSON body. A client
that goes away cancels its generation, which stops at the end of the current decoding step.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..decode import Result
from ..model import Model
from . import schemas as s
from .config import ServeConfig
from .engine import Engine, Prepared, shutting_down
from .errors import APIError, install_error_handlers
from .guards import CheckHost, LimitBody, RequireKey
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import render as render_metrics
from .views import owner_of
from .worker import Cancelled, Generation

__all__ = ["ServeConfig", "create_app"]

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
VIEW_PATH = "/v1/paradec/view/"
# the decoding view is one file with inline CSS and JavaScript: it may load nothing at all
VIEW_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
                "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def paradec_extra(engine: Engine, gen: Generation, prepared: Prepared) -> dict:
    """``usage`` and the extra ``paradec`` field (method and decoding stats; with n > 1 also every
    choice's stats; the decoding view's URL if the request asked for one) of a finished generation."""
    results = gen.results
    extra = choice_extra(engine, prepared, 0, results[0])
    if len(results) > 1:
        extra["choices"] = [r.stats.to_dict() for r in results]
    return {
        "usage": s.usage(prepared.prompt_tokens, sum(len(r.token_ids) for r in results)),
        "paradec": extra,
    }


def choice_extra(engine: Engine, prepared: Prepared, i: int, result: Result) -> dict:
    """The ``paradec`` field of choice ``i`` as it ends: method and stats, and for the first choice
    the URL of its decoding view if the request asked for one (kept from now on)."""
    extra = {"method": prepared.method, "stats": result.stats.to_dict()}
    if i == 0 and prepared.view is not None:
        engine.views.add(prepared.view, result)
        extra["view"] = VIEW_PATH + prepared.view.id
    return extra


def finish_reason(result: Result) -> str:
    return s.FINISH_REASONS.get(result.stats.stop_reason, "stop")


async def until_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the request body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_to_end(request: Request, gen: Generation) -> list[str] | None:
    """Every choice's whole text, or None if the client went away first (then the generation is
    cancelled). A generation cancelled by the server (shutting down) is a 503."""
    collect = asyncio.ensure_future(gen.texts())
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
        raise shutting_down() from None
    except Exception as exc:  # logged on the worker thread, where it happened
        raise APIError.internal() from exc


async def event_stream(
    engine: Engine, gen: Generation, prepared: Prepared, req: s.GenerationRequest, chat: bool, model: str
) -> AsyncIterator[str]:
    """SSE chunks: (chat: a role delta per choice), one chunk per text piece, for each choice a chunk
    with its ``finish_reason`` and ``paradec`` stats as it ends, a usage chunk if
    ``stream_options.include_usage``, ``data: [DONE]``."""
    rid = s.new_id("chatcmpl" if chat else "cmpl")
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(i: int, text: str | None, finish: str | None = None, **more: Any) -> dict:
        if chat:
            delta = {} if text is None else {"content": text}
            return s.envelope(rid, obj, model, [s.chat_delta(delta, finish, i)], **more)
        return s.envelope(rid, obj, model, [s.completion_choice(text or "", finish, i)], **more)

    try:
        if chat:
            for i in range(len(prepared.seqs)):
                delta = {"role": "assistant", "content": ""}
                yield sse(s.envelope(rid, obj, model, [s.chat_delta(delta, None, i)]))
        try:
            async for kind, i, value in gen.events():
                if kind == "piece":
                    yield sse(chunk(i, value))
                else:
                    yield sse(chunk(i, None, finish_reason(value), paradec=choice_extra(engine, prepared, i, value)))
        except Cancelled:  # by the server: the client's own disconnect cancels this generator instead
            err = shutting_down()
            yield sse(s.error_body(err.message, err.type, code=err.code))
            yield sse("[DONE]")
            return
        except Exception:  # noqa: BLE001  (reported in the stream, logged on the worker thread; the server goes on)
            err = APIError.internal()
            yield sse(s.error_body(err.message, err.type))
            yield sse("[DONE]")
            return
        if req.stream_options and req.stream_options.include_usage:
            yield sse(s.envelope(rid, obj, model, [], usage=paradec_extra(engine, gen, prepared)["usage"]))
        yield sse("[DONE]")
    finally:  # also on client disconnect, when starlette cancels this generator
        gen.cancel()


def create_app(model: Model, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``model``; one worker thread decodes its generations together."""
    engine = Engine(model, config or ServeConfig())
    config, served, created = engine.config, engine.served, int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.close()

    app = FastAPI(
        title="paradec",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible API for paradec: parallel decoding, same output.",
    )
    app.state.engine, app.state.worker = engine, engine.worker
    # the last one added runs first: Host header, then API key, then the body size
    app.add_middleware(LimitBody, limit=config.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(RequireKey, key=config.api_key)
    app.add_middleware(CheckHost, allowed=config.allowed_hosts)
    install_error_handlers(app)

    def model_card() -> dict:
        return {
            "id": served,
            "object": "model",
            "created": created,
            "owned_by": "paradec",
            "paradec": {"methods": sorted(engine.methods()), "default_method": config.method, "context_length": engine.context},
        }

    async def respond(request: Request, req: s.GenerationRequest, prompt: Any, chat: bool, default: int | None):
        engine.check_capacity()
        owner = owner_of(request.headers.get("authorization")) if config.api_key is not None else None
        prepared = await run_in_threadpool(engine.prepare, req, prompt, chat, default, owner)
        gen = engine.start(prepared)
        if req.stream:
            return StreamingResponse(
                event_stream(engine, gen, prepared, req, chat, served),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        texts = await run_to_end(request, gen)
        if texts is None:
            return Response(status_code=499)  # the client closed the request; nobody reads this
        ends = [finish_reason(r) for r in gen.results]
        if chat:
            rid, obj = s.new_id("chatcmpl"), "chat.completion"
            choices = [s.chat_choice(t, end, i) for i, (t, end) in enumerate(zip(texts, ends))]
        else:
            rid, obj = s.new_id("cmpl"), "text_completion"
            choices = [s.completion_choice(t, end, i) for i, (t, end) in enumerate(zip(texts, ends))]
        return JSONResponse(s.envelope(rid, obj, served, choices, **paradec_extra(engine, gen, prepared)))

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 "ok" while the worker makes progress; 503 "stalled" when the running generation has not
        finished a decoding step for ``stall_after`` seconds, 503 "stopped" when the worker is gone."""
        worker = engine.worker
        age = worker.step_age
        if not worker.alive:
            status = "stopped"
        elif age is not None and age > config.stall_after:
            status = "stalled"
        else:
            status = "ok"
        body = {
            "status": status,
            "model": served,
            "running": worker.running,
            "queued": worker.queued,
            "seconds_since_step": None if age is None else round(age, 3),
        }
        return JSONResponse(body, 200 if status == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format: queue length, running requests and sequences, tokens/s, tokens per forward."""
        return Response(render_metrics(engine.worker), media_type=METRICS_TYPE)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        engine.check_model(model_id)
        return model_card()

    @app.get(VIEW_PATH + "{view_id}")
    async def view(view_id: str, request: Request) -> HTMLResponse:
        """The decoding view of a request that asked for one, to the same API key only."""
        owner = owner_of(request.headers.get("authorization")) if config.api_key is not None else None
        page = await run_in_threadpool(engine.views.page, view_id, owner, model.tokenizer, served)
        if page is None:
            raise APIError(404, f"no decoding view '{view_id}' here: views are kept for the last {config.max_views} "
                                "requests that asked for one, and shown only with their API key", code="view_not_found")
        return HTMLResponse(page, headers=VIEW_HEADERS)

    @app.post("/v1/completions")
    async def completions(req: s.CompletionRequest, request: Request) -> Response:
        return await respond(request, req, req.single_prompt(), False, COMPLETION_DEFAULT_MAX_TOKENS)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: s.ChatCompletionRequest, request: Request) -> Response:
        return await respond(request, req, req.prompt_messages(), True, config.default_max_tokens)

    return app
