"""Turn a model spec (built-in name, Hugging Face directory or .gguf file) into a loaded model.

Built-in names (``builtins.py``) resolve to a file inside an installed package; split models are
joined and checksum-verified there first.

GGUF files are dequantized by transformers, which takes ~20 s for SmolLM2-135M; the result is
cached once as a safetensors directory (``$PARADEC_CACHE``, default ``~/.cache/paradec``), so
later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import json
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ParadecError
from .builtins import BUILTIN_MODELS, BuiltinModel, cache_root, package_dir  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float64")  # torch dtype names; torch is imported only to load a model
DEFAULT_DTYPE = "bfloat16"
DEFAULT_MODEL = "smollm2-135m"

log = logging.getLogger(__name__)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ParadecError(f"unknown dtype '{name}'; choose one of: {', '.join(DTYPES)}")
    import torch

    return getattr(torch, name)


def resolve(spec: str) -> Path:
    """Map a spec to a local path: a built-in name's file, a model directory or a .gguf file."""
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec].locate()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ParadecError(f"'{spec}' is a directory but holds no config.json: not a Hugging Face model directory")
        return path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ParadecError(f"'{spec}' is a file but not a .gguf file; pass a .gguf file or a model directory")
        return path
    if path.suffix == ".gguf" or os.sep in spec or spec.startswith("."):
        raise ParadecError(f"no such file or directory: '{spec}'")
    names = ", ".join(BUILTIN_MODELS)
    raise ParadecError(
        f"unknown model '{spec}': not a built-in name ({names}) nor a local path "
        "(models are not downloaded: pass a Hugging Face model directory or a .gguf file)"
    )


def gguf_as_directory(path: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors model directory, and return it."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    for module, pkg in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ParadecError(f"loading .gguf files needs the '{pkg}' package; install it with: pip install {pkg}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to a cached safetensors copy (once, ~20 s)", path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unreadable / unsupported GGUF files
        raise ParadecError(f"transformers cannot load the GGUF file '{path}': {_first_line(exc)}") from exc
    model.hf_quantizer = None  # the weights are dequantized already; this lets save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a concurrent or interrupted conversion leaves no half copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def load_tokenizer(directory: Path):
    """The tokenizer of a local model directory. A plain fast tokenizer (what GGUF conversions write)
    is built directly: AutoTokenizer's class lookup costs seconds of imports."""
    try:
        declared = json.loads((directory / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        declared = None
    try:
        if declared in ("TokenizersBackend", "PreTrainedTokenizerFast") and (directory / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:
        raise ParadecError(f"transformers cannot load the tokenizer in '{directory}': {_first_line(exc)}") from exc


def load_pretrained(directory: Path, dtype: torch.dtype):
    """The transformers model of a local directory, never touching the network."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading a local copy takes < 1 s: no bar
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise ParadecError(f"transformers cannot load the model in '{directory}': {_first_line(exc)}") from exc
    return model.eval()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
