"""Peers: what a user would pick instead of paradec, run in the same process on the same weights.

- ``hf-generate``: transformers' own greedy ``generate`` (also the second reference for exactness);
- ``hf-prompt-lookup``: its prompt lookup decoding (``prompt_lookup_num_tokens``);
- ``hf-assisted``: its assisted generation with a draft model (only with ``--draft``; a draft with another
  tokenizer through its universal assisted generation, which re-tokenises the assistant's text);
- ``hf-early-exit``: its self-speculative early-exit drafting (LayerSkip) with the first quarter of the layers;
- ``lade``: the LookaheadDecoding package, where it installs and runs.

A peer that cannot run is returned with the reason, never silently dropped.
"""

from __future__ import annotations

import importlib.util
import time

import torch

from ..model import Model
from .runner import Run

PROMPT_LOOKUP_TOKENS = 10  # transformers' documented example value


class HFGenerate:
    """transformers ``generate`` with a fixed greedy config.

    Target forward passes are counted by a hook on the last decoder layer, which only full forwards
    reach (an early-exit draft stops before it).
    """

    kind = "peer"

    def __init__(self, model: Model, name: str, assistant: Model | None = None, **options):
        self.name, self.model, self.assistant, self.options = name, model, assistant, options
        self.eos = sorted(model.eos_token_ids)

    def run(self, prompt_ids: list[int], max_new_tokens: int) -> Run:
        from transformers import GenerationConfig

        hf = self.model.hf_model
        pad = self.model.tokenizer.pad_token_id
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=self.eos or None, pad_token_id=pad if pad is not None else (self.eos[0] if self.eos else 0),
            **self.options,
        )
        extra = {"assistant_model": self.assistant.hf_model} if self.assistant else {}
        if self.assistant and self.assistant.tokenizer.get_vocab() != self.model.tokenizer.get_vocab():
            # universal assisted generation: the assistant's text is re-tokenised for the target
            extra.update(tokenizer=self.model.tokenizer, assistant_tokenizer=self.assistant.tokenizer)
        calls = [0]

        def count(*_):
            calls[0] += 1

        layers = getattr(hf.get_decoder(), "layers", None)
        hook = (layers[-1] if layers else hf).register_forward_pre_hook(count)
        try:
            ids = torch.tensor([prompt_ids])  # (1, prompt)
            start = time.perf_counter()
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, **extra)
            seconds = time.perf_counter() - start
        finally:
            hook.remove()
        generated = out[0, len(prompt_ids):].tolist()  # may end with EOS (then padding, at batch 1 none)
        stop = next((i for i, t in enumerate(generated) if t in self.eos), None)
        produced = len(generated) if stop is None else stop + 1  # tokens the forwards yielded, EOS included
        token_ids = generated if stop is None else generated[:stop]
        forwards = max(calls[0] - 1, 0)  # the first call is the prefill, which yields the first token
        accepted = max(produced - 1 - forwards, 0)  # each later forward yields 1 token + its accepted drafts
        return Run(token_ids, seconds, forwards, accepted)


def lade_reason() -> str:
    """Why the ``lade`` package (LookaheadDecoding) cannot run here."""
    if importlib.util.find_spec("lade") is None:
        return "not installed (pip install lade)"
    try:
        import lade  # noqa: F401
    except Exception as exc:  # it imports transformers 4.x internals by name
        return f"does not import with this transformers: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return ("lade patches transformers' greedy search for the whole process (lade.augment_all), which would "
            "change every other contender of this run; not run in-process")


def make_peers(model: Model, draft: Model | None = None, names=("hf-generate", "hf-prompt-lookup", "hf-early-exit",
                                                                  "hf-assisted")) -> tuple[list, dict[str, str]]:
    """The transformers peers among ``names`` that can run, and {name: reason} for those that cannot."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # assisted generation warns about its own internal arguments
    layers = model.runtime.layers
    options = {"hf-generate": {}, "hf-prompt-lookup": {"prompt_lookup_num_tokens": PROMPT_LOOKUP_TOKENS},
               "hf-early-exit": {"assistant_early_exit": max(1, layers // 4)}}
    peers: list = [HFGenerate(model, name, **options[name]) for name in options if name in names]
    unavailable: dict[str, str] = {}
    if "hf-assisted" in names:
        if draft is not None:
            peers.append(HFGenerate(model, "hf-assisted", assistant=draft))
        else:
            unavailable["hf-assisted"] = "needs a draft model: pass --draft MODEL"
    return peers, unavailable
