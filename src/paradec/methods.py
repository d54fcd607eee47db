"""The built-in decoding methods by name: the ``paradec.drafters`` module that implements each, and
the line ``paradec methods`` prints for it.

Plain data, so that listing the methods needs neither torch nor transformers; importing
``paradec.drafters`` imports these modules, which registers their drafter classes in ``METHODS``.
"""

from __future__ import annotations

from typing import NamedTuple


class BuiltinMethod(NamedTuple):
    module: str  # in paradec.drafters
    summary: str  # one line for `paradec methods`


BUILTIN_METHODS: dict[str, BuiltinMethod] = {
    "auto": BuiltinMethod("auto", "the default: picks, step by step, the lossless method and draft size expected to "
                                  "be fastest on this machine (measured cost curve) for this text (observed "
                                  "acceptance), or no draft where none pays"),
    "plain": BuiltinMethod("plain", "plain autoregressive decoding (no draft): the baseline, one token per forward pass"),
    "jacobi": BuiltinMethod("jacobi", "Jacobi decoding: refine a window of guessed tokens each pass, accept the "
                                      "converged prefix (SJD acceptance when sampling)"),
    "lookahead": BuiltinMethod("lookahead", "Lookahead decoding: a W x N Jacobi window harvests n-grams, up to G "
                                            "pooled n-grams verified in the same pass"),
    "ngram": BuiltinMethod("ngram", "n-gram lookup in prompt + output (multi-level n, adaptive length, tree of continuations)"),
    "recycling": BuiltinMethod("recycling", "Token Recycling: top-k successors of every token from past forwards, BFS "
                                            "tree over a static template"),
    "draft": BuiltinMethod("draft_model", "speculative decoding with a smaller draft model of the same vocabulary "
                                          "(--draft MODEL); chain or dynamic tree (tree_nodes), adaptive length"),
    "layerskip": BuiltinMethod("layerskip", "self-speculation: the target's first layers draft (no second model); "
                                            "untrained it is accepted rarely (~1.1 tokens/forward), so it needs a "
                                            "trained exit head to help"),
    "eagle": BuiltinMethod("eagle", "EAGLE: a trained feature head (one decoder layer over the target's hidden states) "
                                    "drafts a cost-aware dynamic tree; ships for smollm2-135m, `paradec train-drafter` "
                                    "trains one for other models"),
    "medusa": BuiltinMethod("medusa", "Medusa: trained residual heads on the last hidden state guess several tokens "
                                      "ahead, a tree of their top tokens (the simpler baseline of eagle)"),
}
