"""Models: load a spec into a ``Model`` (tokenizer + runtime); each generation gets its own target.

Importing this package does not import torch or transformers (``paradec models`` and ``--help``
read its names); loading a model does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ParadecError
from ..runtime import DEFAULT_QUANT, DEFAULT_RUNTIME, QUANTS, RUNTIMES, load_runtime
from .loading import (BUILTIN_MODELS, DEFAULT_DTYPE, DEFAULT_MODEL, DTYPES, gguf_as_directory, load_pretrained,
                      load_tokenizer, parse_dtype, resolve)

if TYPE_CHECKING:
    import torch


@dataclass
class Model:
    """A loaded causal LM: its tokenizer and the runtime that runs it. Stateless between generations:
    caches live in targets (``model.target()``, one per sequence)."""

    name: str
    tokenizer: object  # a transformers tokenizer
    runtime: object  # runtime.native.NativeRuntime | runtime.hf.HFRuntime
    dtype: torch.dtype
    quant: str = "none"
    path: Path = Path(".")  # what the spec named (a .gguf file or a directory)
    directory: Path | None = None  # the transformers directory (config, tokenizer, safetensors)
    eos_ids: tuple[int, ...] = ()  # from the generation config
    _hf: object = field(default=None, repr=False)
    diffusion: object = None  # a diffusion LM's DiffusionSpec (paradec.diffusion.formats); None for a causal LM

    @classmethod
    def from_hf(cls, hf_model, tokenizer, runtime: str = DEFAULT_RUNTIME, quant: str = "none", name: str = "model") -> "Model":
        """Wrap a transformers model built in memory (tests build tiny random ones)."""
        if runtime == "native":
            from ..runtime.native import NativeRuntime

            rt = NativeRuntime.from_hf(hf_model, hf_model.dtype, quant)
        elif runtime == "hf":
            from ..runtime.hf import HFRuntime

            rt = HFRuntime(hf_model)
        else:
            raise ValueError(f"unknown runtime {runtime!r}")
        eos = hf_model.generation_config.eos_token_id
        return cls(name, tokenizer, rt, hf_model.dtype, rt.quant, eos_ids=_ids(eos), _hf=hf_model)

    @property
    def hf_model(self):
        """The transformers model (the ``hf`` runtime's own; loaded on first use for the native runtime,
        which never needs it: the benchmark's transformers peers do)."""
        if self._hf is None:
            self._hf = self.runtime.model if self.runtime.name == "hf" else load_pretrained(self.directory, self.dtype)
        return self._hf

    @property
    def max_length(self) -> int:
        return self.runtime.max_length

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head: valid token ids and the width of every logits row."""
        return self.runtime.vocab_size

    def check_ids(self, ids: list[int]) -> None:
        """Raise a ParadecError naming the first id outside [0, vocab_size): read as a row of the
        embedding table, it would read memory outside it (the kernels do not check every row)."""
        vocab = self.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ParadecError(f"token id {bad} is not in the vocabulary of '{self.name}': ids go from 0 to "
                               f"{vocab - 1} (vocabulary size {vocab})")

    @property
    def eos_token_ids(self) -> set[int]:
        ids = set(self.eos_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def target(self, layers: int | None = None, exit_head=None):
        """A fresh sequence with an empty KV cache; ``layers``/``exit_head``: only the first layers
        (self-speculative drafting)."""
        return self.runtime.target(layers, exit_head)


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def load(spec: str | Model = DEFAULT_MODEL, dtype: str | torch.dtype = DEFAULT_DTYPE, runtime: str = DEFAULT_RUNTIME,
         quant: str = DEFAULT_QUANT) -> Model:
    """Load a built-in name (``smollm2-135m``), a Hugging Face model directory or a ``.gguf`` file.
    A diffusion LM directory (LLaDA, Dream, Fast-dLLM v2 formats) gives a ``Model`` with ``diffusion`` set.

    ``dtype``: ``float32``, ``bfloat16`` or ``float64``; ``runtime``: ``native`` or ``hf``;
    ``quant``: ``auto`` (in bfloat16, a GGUF file's own 4-/8-bit blocks where the native kernels read
    them; else ``none``), ``none``, ``int8`` or ``int4`` (native runtime). Nothing is downloaded.
    """
    if isinstance(spec, Model):
        return spec
    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    if runtime not in RUNTIMES:
        raise ParadecError(f"unknown runtime '{runtime}'; choose one of: {', '.join(RUNTIMES)}")
    path = resolve(spec)
    if path.is_dir():
        from ..diffusion import formats

        if formats.detect(path):  # LLaDA / Dream / Fast-dLLM v2: mapped onto the same runtimes, denoised by diffusion/
            return formats.load(path, torch_dtype, runtime, quant, name=spec)
    gguf = path if path.suffix == ".gguf" else None
    directory = gguf_as_directory(path) if gguf else path
    tokenizer = load_tokenizer(directory)
    rt = load_runtime(runtime, directory, torch_dtype, quant, gguf)
    try:  # generation_config.json is read directly: transformers' GenerationConfig import takes seconds
        eos = json.loads((directory / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError):
        eos = None
    return Model(name=spec, tokenizer=tokenizer, runtime=rt, dtype=torch_dtype, quant=rt.quant, path=path,
                 directory=directory, eos_ids=_ids(eos), _hf=getattr(rt, "model", None))


__all__ = ["BUILTIN_MODELS", "DEFAULT_DTYPE", "DEFAULT_MODEL", "DEFAULT_QUANT", "DEFAULT_RUNTIME", "DTYPES", "Model", "QUANTS",
           "RUNTIMES", "load"]
