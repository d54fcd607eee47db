"""llama.cpp as a peer: what a CPU user would otherwise run, on the same GGUF weights.

Two contenders through ``llama-cpp-python`` (optional: ``pip install llama-cpp-python`` builds
llama.cpp from source, ~10-15 minutes; it is not part of ``make`` setup):

- ``llamacpp``: its plain greedy decoding;
- ``llamacpp-lookup``: its prompt lookup decoding (``LlamaPromptLookupDecoding``, 10 drafted tokens).

By default (``--llamacpp auto``) the peer runs in llama.cpp's fastest configuration on the machine at
hand, within the file's class (4-bit stays 4-bit): ``best_spec`` times a short greedy decode for each
candidate — the file as shipped and, for a 4-bit file, requantized to Q4_0 (llama.cpp's fastest 4-bit
kernels), at 1 .. cores threads — once per machine, llama.cpp version and file, and caches the winner
under ``$PARADEC_CACHE/llamacpp/``. ``--llamacpp QUANT:THREADS`` chooses by hand; ``file`` keeps the
GGUF's own quantization. Requantized files are cached there too. llama.cpp computes with its own kernels (int8 activations), so its outputs can differ
from paradec's float32 plain decoding; the report shows where.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

from ..errors import ParadecError
from ..model import Model
from .runner import Run

DEFAULT_SPEC = "auto"
LOOKUP_TOKENS = 10
FOUR_BIT = {"Q4_0", "Q4_1", "Q4_K", "IQ4_NL", "IQ4_XS"}  # tensor types (file_type reads tensors, not file types)
log = logging.getLogger(__name__)


def unavailable_reason(model: Model) -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "not installed (pip install llama-cpp-python; builds llama.cpp from source, ~10-15 min)"
    if model.path.suffix != ".gguf":
        return f"needs a GGUF model; '{model.name}' is not one"
    return None


def parse_spec(spec: str) -> tuple[str, int]:
    """``"Q4_0:1"`` → ("Q4_0", 1): a llama.cpp file type (or ``file``) and a thread count."""
    quant, _, threads = spec.partition(":")
    try:
        n = int(threads or 1)
    except ValueError:
        raise ParadecError(f"--llamacpp wants QUANT:THREADS such as Q4_0:1, got '{spec}'") from None
    if n < 1:
        raise ParadecError(f"--llamacpp threads must be >= 1, got {n}")
    return quant.upper() if quant.lower() != "file" else "file", n


def gguf_for(model: Model, quant: str) -> Path:
    """The model's GGUF file requantized to ``quant`` (cached), or the file itself for ``file``."""
    import llama_cpp

    if quant == "file":
        return model.path
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}", None)
    if ftype is None:
        raise ParadecError(f"llama.cpp has no file type '{quant}' (e.g. Q4_0, Q4_1, Q8_0, BF16, F16)")
    from ..model.builtins import cache_root

    out = cache_root() / "llamacpp" / f"{model.path.stem}.{quant}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(model.path).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise ParadecError(f"llama.cpp could not requantize {model.path.name} to {quant}")
        tmp.replace(out)
    return out


class LlamaCpp:
    """One llama.cpp contender; token ids in, token ids out (the GGUF's own vocabulary is the model's)."""

    kind = "peer"

    def __init__(self, model: Model, name: str, quant: str, threads: int, lookup: bool):
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.name, self.eos, self.lookup = name, model.eos_token_ids, lookup
        draft = LlamaPromptLookupDecoding(num_pred_tokens=LOOKUP_TOKENS) if lookup else None
        self.llm = Llama(model_path=str(gguf_for(model, quant)), n_ctx=min(model.max_length, 4096), n_threads=threads,
                         n_threads_batch=threads, n_batch=512, draft_model=draft,
                         logits_all=lookup,  # its speculative path reads every row's logits
                         verbose=False)

    def run(self, prompt_ids: list[int], max_new_tokens: int) -> Run:
        out: list[int] = []
        self.llm.reset()  # forget the last prompt: generate() would reuse its cached prefix and skip the prefill
        start = time.perf_counter()
        for token in self.llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True):
            if token in self.eos:
                break
            out.append(token)
            if len(out) >= max_new_tokens:
                break
        seconds = time.perf_counter() - start
        # plain: one forward per token after the first (which the prompt's pass yields); prompt lookup's
        # passes are not reported by llama-cpp-python (0 = unknown: the report shows no tokens/forward)
        return Run(out, seconds, forward_passes=0 if self.lookup else max(len(out) - 1, 0), accepted_tokens=0)


def candidates(model: Model, cores: int) -> list[str]:
    """The configurations ``best_spec`` times: the file as shipped, and Q4_0 for a 4-bit file; 1 .. cores threads."""
    main = file_type(model.path)  # one read of the file's tensor table
    quants = ["file"] + (["Q4_0"] if main in FOUR_BIT and main != "Q4_0" else [])
    return [f"{q}:{t}" for q in quants for t in range(1, max(1, cores) + 1)]


def file_type(path: Path) -> str:
    """The GGUF's main tensor type (its decoder layers' most common one), e.g. Q4_1 or Q4_K."""
    import collections

    import gguf

    kinds = collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors if t.name.startswith("blk.")
                                and len(t.shape) == 2)
    return kinds.most_common(1)[0][0] if kinds else "F32"


def file_class(path: Path) -> str:
    kind = file_type(path)
    return "4-bit" if kind in FOUR_BIT else kind


def best_spec(model: Model, cores: int | None = None, tokens: int = 32, measure=None) -> str:
    """llama.cpp's fastest configuration for ``model`` here (``candidates``), measured once and cached."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        llama_version = version("llama-cpp-python")
    except PackageNotFoundError:
        llama_version = "?"
    cores = cores or os.cpu_count() or 1
    specs = candidates(model, cores)
    st = model.path.stat()
    key = {"machine": _machine(), "cores": cores, "llama_cpp": llama_version,
           "file": [str(model.path.resolve()), st.st_size, st.st_mtime_ns], "candidates": specs, "tokens": tokens}
    from ..model.builtins import cache_root

    path = cache_root() / "llamacpp" / f"best-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"
    try:
        return json.loads(path.read_text())["best"]
    except (OSError, ValueError, KeyError):
        pass
    log.warning("timing llama.cpp's configurations (%s) to pick its fastest (once; cached in %s)", ", ".join(specs), path.parent)
    speeds = {spec: (measure or _tokens_per_second)(model, spec, tokens) for spec in specs}
    best = max(speeds, key=speeds.get)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "tokens_per_second": speeds, "best": best}, indent=1))
    return best


def _machine() -> list:
    import platform

    from ..costs import _cpu_name

    return [platform.machine(), _cpu_name()]


def _tokens_per_second(model: Model, spec: str, tokens: int) -> float:
    """One-token forwards per second after a short prompt (llama.cpp's decode step, sampling aside),
    best of 3 after a warm-up."""
    quant, threads = parse_spec(spec)
    llm = LlamaCpp(model, "llamacpp", quant, threads, lookup=False).llm
    prompt = [1000 + i for i in range(32)]
    best = 0.0
    for i in range(4):
        llm.reset()
        llm.eval(prompt)
        start = time.perf_counter()
        for j in range(tokens):
            llm.eval([2000 + j])
        if i:
            best = max(best, tokens / (time.perf_counter() - start))
    del llm
    return best


def make_llamacpp(model: Model, spec: str = DEFAULT_SPEC) -> tuple[list, dict[str, str]]:
    """The llama.cpp contenders, or the reason they cannot run (``auto``: ``best_spec``)."""
    why = unavailable_reason(model)
    if why:
        return [], {"llamacpp": why, "llamacpp-lookup": why}
    if spec == "auto":
        spec = best_spec(model)
    quant, threads = parse_spec(spec)
    label = f"{quant}, {threads} thread{'s' if threads > 1 else ''}"
    try:
        peers = [LlamaCpp(model, "llamacpp", quant, threads, lookup=False),
                 LlamaCpp(model, "llamacpp-lookup", quant, threads, lookup=True)]
    except (ParadecError, ValueError, RuntimeError) as exc:
        return [], {"llamacpp": str(exc), "llamacpp-lookup": str(exc)}
    for p in peers:
        p.config = label
    return peers, {}
