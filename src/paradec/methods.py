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
    "forced": BuiltinMethod("forced", "only the tokens a constraint's grammar forces (--json-schema, --regex, --grammar), "
                                      "drafted for free and verified; plain decoding without a constraint"),
    "jacobi": BuiltinMethod("jacobi", "Jacobi decoding: refine a window of guessed tokens each pass, accept the "
                                      "converged prefix (SJD acceptance when sampling)"),
    "lookahead": BuiltinMethod("lookahead", "Lookahead decoding: a W x N Jacobi window harvests n-grams, up to G "
                                            "pooled n-grams verified in the same pass"),
    "ngram": BuiltinMethod("ngram", "n-gram lookup in prompt + output (multi-level n, adaptive length, tree of continuations)"),
    "suffix": BuiltinMethod("suffix", "suffix automata over prompt + output and over the model's earlier conversations "
                                      "(and given documents): the longest match's continuations, a tree by frequency "
                                      "(SAM-Decoding / SuffixDecoding)"),
    "merge": BuiltinMethod("merge", "merged trees: the branches of several drafters (suffix, recycling, the shipped eagle "
                                    "head) in one block, each node valued by its calibrated chance of acceptance and "
                                    "kept while it pays at the measured cost of rows"),
    "recycling": BuiltinMethod("recycling", "Token Recycling: top-k successors of every token from past forwards, BFS "
                                            "tree over a static template"),
    "draft": BuiltinMethod("draft_model", "speculative decoding with a smaller draft model of the same vocabulary "
                                          "(--draft MODEL); chain or dynamic tree (tree_nodes), adaptive length"),
    "pearl": BuiltinMethod("pearl", "PEARL: a draft model (--draft MODEL, any tokenizer) drafts on cores of its own "
                                    "while the target verifies (pre- and post-verify); --draft-threads/--target-threads"),
    "layerskip": BuiltinMethod("layerskip", "self-speculation: the target's first layers draft (no second model); "
                                            "untrained it is accepted rarely (~1.1 tokens/forward), so it needs a "
                                            "trained exit head to help"),
    "eagle": BuiltinMethod("eagle", "EAGLE: a trained feature head (one decoder layer over the target's hidden states) "
                                    "drafts a cost-aware dynamic tree; ships for smollm2-135m, `paradec train-drafter` "
                                    "trains one for other models"),
    "medusa": BuiltinMethod("medusa", "Medusa: trained residual heads on the last hidden state guess several tokens "
                                      "ahead, a tree of their top tokens (the simpler baseline of eagle)"),
}

# The decoders of diffusion LMs (``paradec.diffusion``): with a diffusion model, ``--method`` names one of
# these ("plain" = low_confidence, one token per step).
DIFFUSION_DECODERS: dict[str, str] = {
    "low_confidence": "LLaDA low-confidence remasking on a fixed schedule; default one token per step (the baseline)",
    "threshold": "Fast-dLLM confidence threshold: commit every position with confidence >= threshold (at least one)",
    "factor": "Fast-dLLM factor rule: the n most confident positions while (n + 1)(1 - confidence) < factor",
    "localleap": "LocalLeap: anchors above a high threshold, their neighbours within a radius above a relaxed one",
    "credit": "CreditDecoding: threshold rule on logits fused with trace credits accumulated over the steps",
    "early_commit": "early commit (Prophet): fixed schedule until the mean top-1/top-2 logit gap is wide, then all at once",
    "lossless": "draft-and-verify (FreeDave-style): the one-token-per-step greedy output in fewer forwards (greedy only)",
    "learned": "Learn2PD-style learned commit filter: a tiny model trained on the dLLM's own traces picks final tokens",
}
