"""``draft``: speculative decoding with a separate, smaller draft model (Leviathan et al. 2023; Chen et al. 2023).

The draft model reads the committed tokens into its own KV cache and proposes a chain or a
dynamic tree (see ``draft_tree.py``); the target verifies it in one forward. Greedy output equals
plain greedy output and sampling keeps the target distribution, whatever the draft proposes.

Both models must share one vocabulary (the same token ids mean the same strings); a draft model with
another tokenizer drafts through text with ``pearl`` (``vocab_bridge.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from ..errors import ParadecError
from ..model import Model, load
from ..options import PATH
from .base import register
from .draft_runner import DraftRunner
from .draft_tree import DraftTreeConfig, TreeDrafter


@dataclass(frozen=True)
class DraftModelConfig(DraftTreeConfig):
    """draft: the draft model, as a model spec (built-in name, HF directory, .gguf) or a loaded ``Model``;
    it is loaded on the target's runtime, in its dtype and quantization."""

    draft: str | Model = field(default="", metadata=PATH)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.draft, Model) and not (isinstance(self.draft, str) and self.draft):
            raise ValueError("the draft method needs a draft model: pass --draft MODEL (method option 'draft')")


@register
class DraftModelDrafter(TreeDrafter):
    name = "draft"
    Config = DraftModelConfig
    config: DraftModelConfig

    def make_runner(self) -> DraftRunner:
        self.draft_model = load_draft(self.config.draft, self.model)
        check_same_vocab(self.model, self.draft_model)
        return DraftRunner(self.draft_model.target())

    def drafting_model(self) -> tuple[Model, int | None]:
        return self.draft_model, None


def load_draft(spec: str | Model, target: Model) -> Model:
    if isinstance(spec, Model):
        return spec
    return _load_cached(spec, target.dtype, target.runtime.name, target.quant)


@lru_cache(maxsize=2)
def _load_cached(spec: str, dtype: torch.dtype, runtime: str, quant: str) -> Model:
    """Draft models are reused across generations (a benchmark builds one drafter per prompt);
    they run on the target's runtime, in its dtype and quantization."""
    return load(spec, dtype, runtime, quant)


def check_same_vocab(target: Model, draft: Model) -> None:
    """Raise a ParadecError naming both tokenizers unless they map the same strings to the same ids."""
    if same_vocab(target, draft):
        return
    t_vocab, d_vocab = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    differ = sum(1 for tok, i in d_vocab.items() if t_vocab.get(tok) != i) + sum(1 for tok in t_vocab if tok not in d_vocab)
    raise ParadecError(
        f"the draft model '{draft.name}' and the target model '{target.name}' use different vocabularies: "
        f"draft tokenizer {_describe(draft)} vs target tokenizer {_describe(target)} ({differ} entries differ); "
        "the draft method needs a draft model with the target's tokenizer (--method pearl drafts across tokenizers)"
    )


def same_vocab(target: Model, draft: Model) -> bool:
    """Whether the two tokenizers map the same strings to the same ids."""
    return target.tokenizer.get_vocab() == draft.tokenizer.get_vocab()


def _describe(model: Model) -> str:
    tok = model.tokenizer
    where = getattr(tok, "name_or_path", "") or str(model.path)
    return f"{type(tok).__name__}('{where}', {len(tok.get_vocab())} tokens)"
