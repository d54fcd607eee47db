"""From a parsed request to a queued generation, without HTTP.

Each request is checked in full (model name, method and options, prompt, token budget) before it
takes a place in the worker's queue. So every bad input gets an immediate 4xx and never reaches
the model.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from ..api import encode_prompt, prepare, prepare_denoising
from ..costs import cost_curve
from ..decode import Sequence
from ..drafters import METHODS, Drafter, make_drafter
from ..errors import ParadecError
from ..model import Model, load
from .switch import DraftSwitch
from . import schemas as s
from .config import ServeConfig, file_options
from .errors import APIError
from .shelf import Shelf
from .views import Recording, Views
from .worker import Closed, Denoising, Generation, Job, QueueFull, Worker

DIFFUSION_DEFAULT_TOKENS = 128  # a diffusion LM's canvas when a request sets no max_tokens (not the whole context)
MAX_DRAFTERS = 8  # kinds (method, options) of shared drafters kept for reuse, least recently used dropped first
FILE_REFUSED = ("requests cannot name a file or a model (such as a draft model, a trained head or a commit filter); "
                "the server's operator chooses them (paradec serve --draft, --method-options)")


def choice_seed(seed: int | None, i: int) -> int | None:
    """The seed of choice i of a request: ``seed + i``, kept in the range requests may use."""
    if seed is None:
        return None
    return seed + i if seed + i < 2**64 else seed + i - 2**64


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", "server_error", code="shutting_down")


@dataclass
class Prepared:
    """A checked request, ready to queue: its sequences (one per choice), its job (cancel, deadline),
    what the response reports."""

    seqs: list[Sequence]
    job: Job
    prompt_tokens: int
    method: str
    view: Recording | None = None  # the first choice's steps, recorded for the decoding view the request asked for


class Engine:
    """One model, the worker that runs its generations, and how requests get their drafters.

    By default every request gets a drafter of its own, so nothing learnt from one client's text
    (Token Recycling's table, for one) reaches another client's drafts or stats. With
    ``share_drafter_state`` the drafters are kept per (method, options) and lent to one request at a
    time (``shelf.py``): what they learnt carries over, a running one is never begun again.
    """

    def __init__(self, model: Model, config: ServeConfig):
        self.model, self.config = model, config
        self.served = config.model_name or model.name
        self.vocab = model.vocab_size
        self.context = model.max_length
        # loaded once, by the operator, on the target's runtime and quantization
        self.draft = None if config.draft is None else load(config.draft, model.dtype, model.runtime.name, model.quant)
        self.build(config.method, self.operator_options(config.method))  # a bad default fails now
        self.shelf = Shelf(MAX_DRAFTERS, config.max_batch)
        self._corpora_lock = threading.Lock()
        self._corpora: OrderedDict[str, Any] = OrderedDict()  # API key owner → its suffix corpus
        measure = config.cost_curve == "measure" and model.diffusion is None  # diffusion LMs do not draft
        switch = DraftSwitch(cost_curve(model)) if measure else None
        self.worker = Worker(config.max_queue, config.max_batch, switch)
        self.views = Views(config.max_views, config.views_dir)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server serves '{self.served}'",
                param="model",
                code="model_not_found",
            )

    def prepare(self, req: s.GenerationRequest, prompt: Any, chat: bool, default_limit: int | None,
                owner: str | None = None) -> Prepared:
        """Check a request and build its decoder (blocking work: call it from a thread pool). ``owner``:
        who may read its decoding view (``views.owner_of`` the request's key; None without a key).
        Kept drafters it was lent go back to the shelf when its job ends (or now, if it is refused)."""
        lent: list[Drafter] = []
        try:
            prepared = self._prepare(req, prompt, chat, default_limit, owner, lent)
        except BaseException:
            self.give_back(lent)
            raise
        prepared.job.when_ended(lambda: self.give_back(lent))
        return prepared

    def give_back(self, drafters: list[Drafter]) -> None:
        for drafter in drafters:
            self.shelf.give_back(drafter)

    def _prepare(self, req: s.GenerationRequest, prompt: Any, chat: bool, default_limit: int | None,
                 owner: str | None, drafters: list[Drafter]) -> Prepared:
        job = Job(self.deadline(req.paradec))
        self.check_model(req.model)
        problem = req.unsupported()
        if problem:
            raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
        n = req.n or 1
        if n > self.config.max_batch:
            raise APIError(400, f"n must be at most {self.config.max_batch} here (the server's batch size)", param="n")
        grammar = self.constraint(req)
        for i in range(n):
            drafters.append(self.drafter(req.paradec, shared=i == 0))
        if owner is not None:  # the suffix drafters read and grow this key's earlier conversations
            for drafter in drafters:
                drafter.use_corpus(self.corpus(owner))
        ids = self.encode(prompt, chat)
        limit = self.token_budget(req, len(ids), default_limit, "messages" if chat else "prompt")
        if self.model.diffusion is not None and req.token_limit() is None:
            limit = min(limit, DIFFUSION_DEFAULT_TOKENS)
        view = None
        if req.paradec and req.paradec.view:
            if not self.views.capacity:
                raise APIError(400, "this server keeps no decoding views (paradec serve --max-views)", param="paradec.view")
            view = self.views.record(ids, owner)
        try:
            seqs = [
                (prepare_denoising if self.model.diffusion is not None else prepare)(
                    self.model,
                    ids,
                    drafter,
                    max_new_tokens=limit,
                    temperature=1.0 if req.temperature is None else req.temperature,  # OpenAI's default
                    top_p=1.0 if req.top_p is None else req.top_p,
                    top_k=req.top_k or 0,
                    seed=choice_seed(req.seed, i),
                    stop=req.stop_list(),
                    interrupt=job.interrupt,
                    on_step=view.trace.step if view is not None and i == 0 else None,
                    **({"constraint": grammar} if grammar is not None else {}),
                )
                for i, drafter in enumerate(drafters)
            ]
        except ParadecError as exc:
            raise APIError(400, str(exc)) from exc
        return Prepared(seqs, job, len(ids), drafters[0].name, view)

    def constraint(self, req: s.GenerationRequest):
        """The request's constraint compiled for the model (``paradec.constraints.Grammar``), or None; a
        bad one is a 400 naming its field, with the grammar library's message."""
        try:
            asked = req.constraints()
        except (ParadecError, ValueError) as exc:
            raise APIError(400, str(exc), param="response_format") from exc
        if not asked:
            return None
        param, constraint = asked[0]
        if len(asked) > 1:
            raise APIError(400, f"give one constraint, not {' and '.join(p for p, _ in asked)}", param=asked[1][0])
        if self.model.diffusion is not None:
            raise APIError(400, "constraints (structured output) are offered for causal LMs, not diffusion LMs", param=param)
        from ..constraints import compile_constraint

        try:
            return compile_constraint(constraint, self.model)
        except ParadecError as exc:
            raise APIError(400, str(exc), param=param, code="invalid_constraint") from exc

    def start(self, prepared: Prepared) -> Generation:
        """Queue a prepared request; 429 when the queue is full, 503 when shutting down."""
        try:
            kind = Denoising if self.model.diffusion is not None else Generation
            return kind(self.worker, prepared.seqs, prepared.job)
        except QueueFull as exc:
            prepared.job.end()  # it never runs: its kept drafters go back
            raise self.busy(str(exc)) from exc
        except Closed as exc:
            prepared.job.end()
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

    def deadline(self, field: s.ParadecField | None) -> float | None:
        """When the request must end (``time.monotonic()``): its ``timeout`` or the server's, from now."""
        asked, limit = (field.timeout if field else None), self.config.max_timeout
        if asked is not None and limit is not None and asked > limit:
            raise APIError(400, f"paradec.timeout must be at most {limit:g} seconds here", param="paradec.timeout")
        timeout = asked if asked is not None else self.config.default_timeout
        return None if timeout is None else time.monotonic() + timeout

    def operator_options(self, method: str) -> dict[str, Any]:
        """The options the operator set for ``method``: ``method_options`` for the default method,
        and the ``--draft`` model for the methods that take one (``draft``, ``pearl``, ``auto``)."""
        options = dict(self.config.method_options) if method == self.config.method else {}
        if self.draft is not None and any(f.name == "draft" for f in dataclasses.fields(METHODS[method].Config)):
            options["draft"] = self.draft
        return options

    def drafter(self, field: s.ParadecField | None, shared: bool = True) -> Drafter:
        """The request's method (or the server's) with the operator's options and the allowed ones of
        the request, as a drafter; with ``share_drafter_state`` an idle kept one for them, lent to this
        request (unless ``shared`` is false: the further choices of a request with n > 1 get drafters of
        their own)."""
        method = field.method if field and field.method else self.config.method
        methods = self.methods()
        if method not in methods:
            raise APIError(
                400,
                f"unknown method '{method}'; choose one of: {', '.join(sorted(methods))}",
                param="paradec.method",
                code="method_not_found",
            )
        own_layers = method == "pearl" and self.operator_options(method).get("drafter") == "layerskip"
        if method in ("draft", "pearl") and self.draft is None and not own_layers:
            raise APIError(400, "this server has no draft model (paradec serve --draft MODEL)", param="paradec.method")
        requested = dict(field.options or {}) if field else {}
        if file_options() & set(requested):  # one message whatever the value: it tells nothing of the files
            raise APIError(400, FILE_REFUSED, param="paradec.options", code="unsupported_parameter")
        refused = sorted(name for name in requested if not self.config.allows(method, name))
        if refused:
            allowed = ", ".join(sorted(self.config.request_options)) or "none (paradec serve --request-options)"
            raise APIError(
                400,
                f"this server does not accept the method option(s) {', '.join(f'{method}.{n}' for n in refused)} "
                f"in requests; it accepts: {allowed}",
                param="paradec.options",
                code="unsupported_parameter",
            )
        options = {**self.operator_options(method), **requested}
        if not (self.config.share_drafter_state and shared):
            return self.build(method, options)
        key = (method, json.dumps(requested, sort_keys=True))
        drafter = self.shelf.take(key)
        return drafter if drafter is not None else self.shelf.lend(key, self.build(method, options))

    def corpus(self, owner: str):
        """The corpus of earlier conversations of one API key (``drafters.suffix``): never another key's."""
        from ..drafters.suffix import SuffixCorpus

        with self._corpora_lock:
            corpus = self._corpora.setdefault(owner, SuffixCorpus())
            self._corpora.move_to_end(owner)
            if len(self._corpora) > MAX_DRAFTERS:
                self._corpora.popitem(last=False)
            return corpus

    def methods(self) -> list[str]:
        """The method names requests may use: the drafters, or a diffusion LM's decoders (and "plain")."""
        if self.model.diffusion is None:
            return list(METHODS)
        from ..diffusion.decoders import DECODERS, make_decoder  # noqa: F401

        return ["auto", "plain", *DECODERS]

    def build(self, method: str, options: dict[str, Any]) -> Drafter:
        """The method's drafter (a diffusion LM: its decoder)."""
        try:
            if self.model.diffusion is not None:
                from ..diffusion.decoders import make_decoder

                return make_decoder(method, self.model, **options)
            return make_drafter(method, self.model, **options)
        except ParadecError as exc:
            raise APIError(400, str(exc), param="paradec.options") from exc

    def encode(self, prompt: Any, chat: bool) -> list[int]:
        param = "messages" if chat else "prompt"
        if isinstance(prompt, list) and not chat and any(not 0 <= t < self.vocab for t in prompt):
            raise APIError(400, f"token ids must be in [0, {self.vocab})", param=param)
        try:
            ids = encode_prompt(self.model, prompt, chat)
        except ParadecError as exc:
            raise APIError(400, str(exc), param=param) from exc
        except TemplateError as exc:  # the template's own check (e.g. "roles must alternate") refused them
            raise APIError(400, f"the model's chat template refused these messages: {exc}", param=param) from exc
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
