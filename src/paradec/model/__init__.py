"""Models: load a spec into a ``Model`` (weights + tokenizer); each generation gets its own ``HFTarget``.

Importing this package does not import torch or transformers (``paradec models`` and ``--help``
read its names); loading a model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .loading import BUILTIN_MODELS, DEFAULT_DTYPE, DEFAULT_MODEL, DTYPES, gguf_as_directory, load_pretrained, parse_dtype, resolve

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .hf import HFTarget


@dataclass
class Model:
    """A loaded causal LM and its tokenizer. Stateless between generations: caches live in targets."""

    name: str
    hf_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    @property
    def max_length(self) -> int:
        from .hf import context_length

        return context_length(self.hf_model)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.hf_model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if source is None:
                continue
            ids.update(source if isinstance(source, (list, tuple)) else [source])
        return ids

    def target(self) -> HFTarget:
        """A fresh runtime with an empty KV cache."""
        from .hf import HFTarget

        return HFTarget(self.hf_model)


def load(spec: str | Model = DEFAULT_MODEL, dtype: str | torch.dtype = DEFAULT_DTYPE) -> Model:
    """Load a built-in name (``smollm2-135m``), a Hugging Face model directory or a ``.gguf`` file.

    ``dtype`` is ``float32``, ``bfloat16`` or ``float64``. Nothing is downloaded.
    """
    if isinstance(spec, Model):
        return spec
    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    path = resolve(spec)
    directory = gguf_as_directory(path) if path.suffix == ".gguf" else path
    hf_model, tokenizer = load_pretrained(directory, torch_dtype)
    return Model(name=spec, hf_model=hf_model, tokenizer=tokenizer, path=path)


def __getattr__(name: str):
    if name == "HFTarget":
        from .hf import HFTarget

        return HFTarget
    raise AttributeError(f"module 'paradec.model' has no attribute '{name}'")


__all__ = ["BUILTIN_MODELS", "DEFAULT_DTYPE", "DEFAULT_MODEL", "DTYPES", "HFTarget", "Model", "load"]
