"""The Python API: ``generate`` returns a ``Result``; ``stream`` yields text pieces as they are decided."""

from __future__ import annotations

from collections.abc import Sequence as Items
from typing import Callable, Iterator

from .constraints import Constraint, Grammar, compile_constraint
from .decode import Result, Sequence, Step, run
from .drafters import Drafter, make_drafter
from .errors import ContextOverflowError, ParadecError
from .model import DEFAULT_DTYPE, Model, load
from .sampling import SamplingParams

Prompt = str | Items[dict] | Items[int]


def encode_prompt(model: Model, prompt: Prompt, chat: bool = False) -> list[int]:
    """Prompt → token ids. A list of ``{"role", "content"}`` messages, or ``chat=True`` on a string,
    goes through the tokenizer's chat template; a list of ints is taken as token ids."""
    tok = model.tokenizer
    if isinstance(prompt, str) and not chat:
        ids = tok(prompt).input_ids
    elif isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict)):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not tok.chat_template:
            raise ParadecError(f"the tokenizer of '{model.name}' has no chat template; pass a plain prompt")
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
    else:
        ids = [int(t) for t in prompt]
        model.check_ids(ids)
    if not ids:
        raise ParadecError("the prompt is empty")
    return ids


class Stream:
    """An iterator of text pieces; ``result`` holds text, token ids and stats once it is exhausted."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.result: Result | None = None

    def __iter__(self) -> Iterator[str]:
        self.result = yield from self._pieces
        return self.result


def prepare(
    model: Model | str,
    prompt: Prompt,
    method: str | Drafter = "auto",
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    chat: bool = False,
    method_options: dict | None = None,
    interrupt: Callable[[], str | None] | None = None,
    on_step: Callable[[Step], None] | None = None,
    constraint: Constraint | Grammar | None = None,
) -> Sequence:
    """Check every argument and build the generation's ``Sequence`` (nothing is decoded yet): what
    ``stream`` runs alone and ``paradec.parallel`` runs in a batch. ``method`` defaults to ``auto``,
    the fastest lossless method for the text on this machine. ``on_step``: called with every decoding
    ``Step`` (``paradec.viz.Trace`` records them for the view). ``constraint``: a ``paradec.Constraint``
    (JSON schema, regex, grammar) the output must match; it is checked here, and the output ends where
    the match is complete (``stats.constraint`` tells whether it got there)."""
    params = checked_params(max_new_tokens, temperature, top_k, top_p, seed)
    model = model if isinstance(model, Model) else load(model, DEFAULT_DTYPE)
    if model.diffusion is not None:
        raise ParadecError(f"'{model.name}' is a diffusion LM: it is decoded by paradec.stream / generate (a "
                           "denoising loop), not stepped as a Sequence")
    grammar = None
    if constraint is not None:
        if stop:
            raise ParadecError("stop strings cannot be combined with a constraint: the constraint decides where the "
                               "output ends (a stop string would cut a match short)")
        grammar = compile_constraint(constraint, model)
    drafter = method if isinstance(method, Drafter) else make_drafter(method, model, **(method_options or {}))
    prompt_ids = encode_prompt(model, prompt, chat)
    check_fits(model, prompt_ids)
    return Sequence(model, drafter, prompt_ids, params, max_new_tokens, stop, interrupt, on_step=on_step,
                    grammar=grammar)


def checked_params(max_new_tokens, temperature, top_k, top_p, seed) -> SamplingParams:
    """The checks both loops (``prepare``, ``prepare_denoising``) make of their common arguments."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ParadecError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)


def check_fits(model: Model, prompt_ids: list[int]) -> None:
    """Refuse a prompt the context window cannot hold with a token after it (before anything runs,
    so that servers can refuse early)."""
    if len(prompt_ids) >= model.max_length:
        raise ContextOverflowError(
            f"the prompt has {len(prompt_ids)} tokens but the model's context window is {model.max_length} tokens"
        )


def stream(model: Model | str, prompt: Prompt, method: str | Drafter = "auto", **kwargs) -> Stream:
    """Like ``generate`` but lazily: iterate for text pieces, then read ``.result``.

    Nothing runs until iteration starts; all arguments are validated here, before that (same keyword
    arguments as ``prepare``). ``interrupt``: asked between decoding steps; a reason it returns ends
    the generation (see ``decode``).
    """
    model = model if isinstance(model, Model) else load(model, DEFAULT_DTYPE)
    if model.diffusion is not None:
        return Stream(prepare_denoising(model, prompt, method, **kwargs))
    return Stream(run(prepare(model, prompt, method, **kwargs)))


def prepare_denoising(
    model: Model,
    prompt: Prompt,
    method="plain",
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    chat: bool = False,
    method_options: dict | None = None,
    interrupt: Callable[[], str | None] | None = None,
    on_step: Callable | None = None,
    constraint: Constraint | None = None,
) -> Iterator[str]:
    """``prepare`` for a diffusion LM: check every argument now, return the denoising loop (text pieces,
    then its ``Result``) to iterate. ``method`` names a diffusion decoder (``paradec.diffusion.decoders``)
    or is one; "plain" (and a plain drafter) is the one-token-per-step baseline, "auto" the lossless
    decoder (its output, in fewer forwards) when greedy and the baseline when sampling. ``on_step`` (the decoding view of
    autoregressive steps) is not offered for diffusion LMs."""
    from .diffusion.decoders import Decoder, make_decoder
    from .diffusion.loop import denoise, layout

    params = checked_params(max_new_tokens, temperature, top_k, top_p, seed)
    if constraint is not None:
        raise ParadecError(f"'{model.name}' is a diffusion LM: constraints (structured output) are offered for causal LMs")
    if on_step is not None:
        raise ParadecError(f"'{model.name}' is a diffusion LM: step hooks (on_step, decoding views) are not offered for it")
    if isinstance(method, Decoder):
        decoder = method
    elif isinstance(method, str) or getattr(method, "name", None) == "plain":
        decoder = make_decoder(method if isinstance(method, str) else "plain", model, **(method_options or {}))
    else:
        raise ParadecError(f"'{model.name}' is a diffusion LM; method '{method.name}' drafts for causal LMs "
                           "(see `paradec methods` for the diffusion decoders)")
    if decoder.greedy_only and not params.greedy and decoder.from_auto:
        decoder = make_decoder("plain", model, block_length=decoder.config.block_length, cache=decoder.config.cache)
    if decoder.greedy_only and not params.greedy:
        raise ParadecError(f"method '{decoder.name}' reproduces greedy decoding; use temperature 0")
    prompt_ids = encode_prompt(model, prompt, chat)
    block, blocks = layout(model, decoder, max_new_tokens)
    if len(prompt_ids) + block * blocks > model.max_length:
        raise ContextOverflowError(
            f"the prompt has {len(prompt_ids)} tokens and the generation needs {block * blocks} positions, but the "
            f"model's context window is {model.max_length} tokens"
        )
    return denoise(model, decoder, prompt_ids, params, max_new_tokens, stop, interrupt)


def generate(model: Model | str, prompt: Prompt, method: str | Drafter = "auto", **kwargs) -> Result:
    """Generate a completion with a decoding method (a registered name or a ``Drafter``; by default
    ``auto``, the fastest lossless method for the text on this machine); keyword arguments:
    ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``, ``stop``, ``chat``,
    ``method_options``, ``interrupt``, ``on_step``, ``constraint`` (see ``prepare``).

    >>> m = paradec.load("smollm2-135m", dtype="float32")
    >>> r = paradec.generate(m, "The capital of France is", max_new_tokens=8)
    >>> r.text, r.token_ids, r.stats.mean_accepted_length
    >>> schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    >>> paradec.generate(m, "Where is the Louvre? JSON:", constraint=paradec.Constraint.json_schema(schema)).text
    """
    s = stream(model, prompt, method, **kwargs)
    for _ in s:
        pass
    return s.result
