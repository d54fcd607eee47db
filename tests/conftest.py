"""Shared fixtures: tiny random models built in-process (no weights downloaded)."""

from __future__ import annotations

import copy

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as paradec sets it (src/paradec/__init__.py), before torch loads

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import paradec
from paradec.drafters.base import Drafter, StepContext
from paradec.model import Model
from paradec.tree import Draft

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 96

# A cost curve c(k)/c(1) given by hand (float32-like), for tests that run `auto` on the real model:
# its own curve would be measured, i.e. the real model timed, which tests never do.
FIXED_COSTS = {"2": 1.3, "4": 1.45, "8": 1.7, "16": 2.4}


def word_tokenizer(vocab: int = VOCAB) -> PreTrainedTokenizerFast:
    """Words w0..w{n-4} plus <unk>, <s>, </s>; ids are stable so tests can name tokens."""
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return fast


RUNTIMES = ("native", "hf")


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float64, vocab: int = VOCAB,
               layers: int = 2, eos: int | None = None, max_positions: int = 256, runtime: str = "native",
               init_range: float = 0.05, quant: str = "none") -> Model:
    """A random 2-layer model; float64 keeps greedy argmax free of numeric ties. ``init_range`` 0.3-0.4
    gives confident and flat rows (for sampling tests). ``runtime``: "native" (float64 runs its plain
    torch reference operations, float32 its C++ kernels) or "hf"."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                  initializer_range=init_range, bos_token_id=1, eos_token_id=eos,
                  pad_token_id=0, tie_word_embeddings=False)
    if arch == "llama":
        hf = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        hf = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(arch)
    hf = hf.to(dtype).eval()
    hf.generation_config.eos_token_id = eos
    tok = word_tokenizer(vocab)
    if eos is None:
        tok.eos_token = None
    return Model.from_hf(hf, tok, runtime=runtime, quant=quant, name=f"tiny-{arch}")


def rebuild(model: Model, hf, name: str | None = None) -> Model:
    """``model`` with other transformers weights (same tokenizer, runtime and quantization)."""
    return Model.from_hf(hf, model.tokenizer, runtime=model.runtime.name, quant=model.quant, name=name or model.name)


def perturbed(model: Model, scale: float, seed: int, name: str = "tiny-draft") -> Model:
    """A copy of ``model`` with noise on every weight: a draft that is often, not always, right."""
    hf = copy.deepcopy(model.hf_model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale * p.std().clamp(min=1e-3))
    return rebuild(model, hf, name)


class OracleDrafter(Drafter):
    """Proposes the next ``k`` tokens of a known continuation (e.g. the plain output) as one chain."""

    name = "oracle"

    def __init__(self, model: Model, truth: list[int], prompt_length: int, k: int = 8):
        super().__init__(model, None)
        self.truth, self.prompt_length, self.k = truth, prompt_length, k

    def propose(self, ctx: StepContext) -> Draft:
        done = len(ctx.tokens) - self.prompt_length  # tokens generated so far
        return Draft.chain(self.truth[done : done + self.k])


_PLAIN: dict[tuple, "paradec.Result"] = {}


def plain_greedy(model: Model, prompt, max_new_tokens: int) -> "paradec.Result":
    """Plain greedy decoding, computed once per (model, prompt, length) for the whole session."""
    key = (id(model), repr(prompt), max_new_tokens)
    if key not in _PLAIN:
        _PLAIN[key] = paradec.generate(model, prompt, "plain", max_new_tokens=max_new_tokens)
    return _PLAIN[key]


def assert_lossless(model: Model, prompts, method, max_new_tokens: int, **options) -> int:
    """Assert ``method`` reproduces plain greedy decoding token for token on every prompt (and never
    needs more forward passes); return the draft tokens it got accepted, so callers can check the
    drafts were exercised."""
    accepted = 0
    for prompt in prompts:
        plain = plain_greedy(model, prompt, max_new_tokens)
        ours = paradec.generate(model, prompt, method, max_new_tokens=max_new_tokens, method_options=options or None)
        assert ours.token_ids == plain.token_ids, (repr(prompt)[:40], options)
        assert ours.stats.forward_passes <= plain.stats.forward_passes
        accepted += ours.stats.accepted_tokens
    return accepted


@pytest.fixture(scope="session", autouse=True)
def share_the_cores():
    """Under pytest-xdist (``make test``), each worker gets its share of the cores for torch and the
    native runtime's pool (which follows torch's thread count): two workers with two threads each on
    two cores would spin against each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield


@pytest.fixture(scope="session", autouse=True)
def cost_cache(tmp_path_factory):
    """Cost curves that tests measure (tiny models only) go to a temporary directory, not the user's cache."""
    import paradec.costs

    directory = tmp_path_factory.mktemp("costs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paradec.costs, "cache_dir", lambda: directory)
        yield directory


@pytest.fixture
def single_thread():
    """Tiny models run hundreds of ~1 ms forwards: a second thread only adds synchronisation
    (and on a loaded machine, spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread_module():
    """``single_thread`` for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama() -> Model:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_qwen2() -> Model:
    return tiny_model("qwen2", seed=1)


@pytest.fixture(scope="session")
def smollm2() -> Model:
    """The real embedded model in float32 (exactness is promised in float32/float64)."""
    return paradec.load("smollm2-135m", dtype="float32")
