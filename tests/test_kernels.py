"""The C++ kernels: every format against gguf-py's formulas, every instruction-set path this machine runs
(row invariance on each, the same bits across them), the thread pool, the build and its fallbacks."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from paradec.errors import ParadecError
from paradec.runtime import tiles
from paradec.runtime.kernels import KernelError, build, kernels, runnable_variants
from paradec.runtime.native import choose_ops
from paradec.runtime.ops import NativeOps, TorchOps
from paradec.runtime.weights import Linear, Part, ggml_part, quantize

from conftest import tiny_model

VARIANTS = runnable_variants()
KERNELS_DIR = Path(build.__file__).parent


def random_blocks(fmt: str, N: int, K: int, seed: int = 0) -> np.ndarray:
    """Valid GGML blocks (N, row bytes) of ``fmt``: random bytes, with scales that are finite and of a
    realistic size (every byte pattern of the quantised values and packed sub-scales occurs)."""
    rng = np.random.default_rng(seed)
    size, nbytes = tiles.BLOCK[fmt]
    b = rng.integers(0, 256, size=(N, K // size, nbytes), dtype=np.uint8)

    def half(lo, hi):
        return rng.uniform(lo, hi, size=(N, K // size, 1)).astype(np.float16).view(np.uint8)

    if fmt in ("q8_0", "q4_0", "q5_0"):
        b[..., 0:2] = half(-0.02, 0.02)
    elif fmt in ("q4_1", "q5_1"):
        b[..., 0:2], b[..., 2:4] = half(0, 0.02), half(-0.1, 0.1)
    elif fmt in ("q4_k", "q5_k"):
        b[..., 0:2], b[..., 2:4] = half(0, 0.002), half(0, 0.002)
    else:  # q6_k
        b[..., 208:210] = half(-0.002, 0.002)
    return b.reshape(N, -1)


def widths(fmt: str) -> list[int]:
    """Row lengths with a full group, a partial group and both (lanes of 32 / super-blocks of 256)."""
    return [256, 768, 2304] if tiles.BLOCK.get(fmt, (32,))[0] == 256 else [64, 96, 576, 1088]


def layer(fmt: str, N: int, K: int, seed: int = 0) -> Linear:
    if fmt in ("f32", "bf16"):
        return quantize(torch.randn(N, K, generator=torch.Generator().manual_seed(seed)), fmt,
                        bias=torch.randn(N, generator=torch.Generator().manual_seed(seed + 1)))
    return Linear((ggml_part(random_blocks(fmt, N, K, seed), fmt, K),), K, torch.randn(N, generator=torch.Generator().manual_seed(seed)))


def reference(x: torch.Tensor, lin: Linear, fmt: str) -> torch.Tensor:
    """What the kernel computes, in float64: quantised weights meet int8 activations (per lane of S)."""
    w = lin.dequantize(torch.float64)
    if fmt in tiles.QUANT_FORMATS:
        S = tiles.LANE[fmt]  # per lane of S: q = round(x * (127 / max|x|)) in float32, as the kernels round
        blocks = x.float().view(x.shape[0], -1, S)
        amax = blocks.abs().amax(-1, keepdim=True)
        inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))  # not 127 / amax: torch takes a reciprocal
        q = torch.round(blocks * inv).clamp(-127, 127)
        x = (q.double() * (amax / 127).double()).view_as(x)
    return x.double() @ w.T + lin.bias.double()


# --- formats: the file's values, byte for byte ---

@pytest.mark.parametrize("fmt", tiles.QUANT_FORMATS)
def test_formats_dequantize_exactly_as_gguf_py(fmt):
    for K in widths(fmt):
        raw = random_blocks(fmt, 9, K, seed=K)
        lin = Linear((ggml_part(raw, fmt, K),), K)
        expected = torch.from_numpy(gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, fmt.upper())))
        assert torch.equal(lin.dequantize(), expected), (fmt, K)
        lanes = tiles.decode(raw, fmt, K)
        back = tiles.untile(tiles.tile(lanes), fmt, 9, K)  # the tiles hold the blocks' values exactly
        assert np.array_equal(back.stored, lanes.stored) and np.array_equal(back.header, lanes.header)


def test_truncated_blocks_are_a_clear_error():
    raw = random_blocks("q4_k", 4, 512)
    with pytest.raises(ValueError, match="bytes per row"):
        ggml_part(raw[:, :-10], "q4_k", 512)
    with pytest.raises(ValueError, match="multiple of 256"):
        ggml_part(raw, "q4_k", 500)


# --- every path: the reference, row invariance, the same bits ---

@pytest.fixture(scope="module", params=VARIANTS)
def ops(request):
    return NativeOps(kernels(request.param))


@pytest.mark.parametrize("fmt", ("f32", "bf16") + tiles.QUANT_FORMATS)
def test_linear_matches_the_dequantized_reference(ops, fmt):
    for K in widths(fmt):
        lin = layer(fmt, 70, K)
        x = torch.randn(5, K)
        y = ops.linear(x, lin)
        ref = reference(x, lin, fmt)
        assert (y.double() - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-5, (fmt, K)


@pytest.mark.parametrize("fmt", ("f32", "bf16") + tiles.QUANT_FORMATS)
def test_linear_rows_are_bitwise_independent(ops, fmt):
    """A row's output is the same bits whether it is computed alone, in small blocks or among 37 rows."""
    lin = layer(fmt, 50, widths(fmt)[2], seed=2)
    x = torch.randn(37, lin.K)
    full = ops.linear(x, lin)
    for size in (1, 2, 3, 4, 5):
        parts = [ops.linear(x[i : i + size].contiguous(), lin) for i in range(0, 37, size)]
        assert torch.equal(torch.cat(parts), full), f"blocks of {size}"


@pytest.mark.parametrize("fmt", tiles.QUANT_FORMATS)
def test_every_path_gives_the_same_bits(fmt):
    """The integer kernels sum each lane exactly and apply the same float steps in the same order on
    AVX-512 (VNNI or BW), AVX2 and scalar code: one result, whichever path the machine takes."""
    results = {}
    for variant in VARIANTS:
        k = NativeOps(kernels(variant))
        for K in widths(fmt):
            lin = layer(fmt, 21, K, seed=K)
            x = torch.randn(6, K, generator=torch.Generator().manual_seed(K))
            results.setdefault(K, {})[variant] = k.linear(x, lin)
    for K, by_path in results.items():
        first = next(iter(by_path.values()))
        for variant, y in by_path.items():
            assert torch.equal(y, first), (fmt, K, variant)


@pytest.mark.parametrize("fmt", ("bf16",) + tiles.QUANT_FORMATS)
def test_embedding_rows_are_the_dequantized_rows(ops, fmt):
    lin = layer(fmt, 13, widths(fmt)[1], seed=5)
    idx = torch.tensor([12, 0, 5, 5, 3])
    assert torch.equal(ops.embed(lin, idx), lin.dequantize()[idx])
    assert torch.equal(lin.rows(idx), lin.dequantize()[idx])


def test_mixed_format_parts_stack_along_the_outputs(ops):
    """q | k | v in different formats (a Q4_K_M file keeps some v in Q6_K): one call, each part's rows."""
    K = 512
    parts = [layer("q4_k", 8, K, 1).parts[0], layer("q4_k", 4, K, 2).parts[0], layer("q6_k", 4, K, 3).parts[0]]
    from paradec.runtime.weights import stack

    lin = stack(parts, K, torch.randn(16))
    assert [p.fmt for p in lin.parts] == ["q4_k", "q6_k"]  # neighbours of one format merge
    x = torch.randn(3, K)
    y = ops.linear(x, lin)
    assert torch.equal(y[:, :12], ops.linear(x, Linear((lin.parts[0],), K, lin.bias[:12])))
    assert torch.equal(y[:, 12:], ops.linear(x, Linear((lin.parts[1],), K, lin.bias[12:])))


def test_out_of_range_token_ids_are_refused_by_the_kernels(ops):
    lin = layer("q8_0", 13, 64)
    for bad in (13, -1, 10**12):
        with pytest.raises(ParadecError, match=f"token id {bad} is outside the vocabulary \\(size 13\\)"):
            ops.embed(lin, torch.tensor([1, bad]))
    from paradec.runtime.ops import linear_c

    idx = torch.tensor([1, 10**12])  # past the Python check: the library refuses it too
    with pytest.raises(KernelError, match="outside the vocabulary"):
        ops.k.embed(linear_c(lin), idx.data_ptr(), 2, torch.empty(2, 64).data_ptr())


def test_a_wrong_input_width_is_refused(ops):
    with pytest.raises(ValueError, match="float32 \\(M, 64\\)"):
        ops.linear(torch.randn(2, 32), layer("q4_0", 8, 64))


@pytest.mark.parametrize("fmt", tiles.QUANT_FORMATS)
def test_tiles_packed_in_python_are_the_size_the_kernels_read(fmt):
    """tiles.py and quant.h describe one layout: a tile of another size is refused before any read."""
    k = NativeOps(kernels())
    for K in widths(fmt):
        lin = layer(fmt, 8, K)
        assert lin.parts[0].w.shape[1] == k.k.tile_bytes(fmt, K)
        k.linear(torch.randn(1, K), lin)
        part = lin.parts[0]
        short = Linear((Part(fmt, part.w[:, :-1].contiguous(), part.N),), K)
        with pytest.raises(ValueError, match="the kernels read"):
            k.linear(torch.randn(1, K), short)


# --- the thread pool ---

def test_thread_pool_never_returns_before_every_chunk_is_done(tmp_path):
    """Jobs of alternating shapes on 3 threads, 20,000 times: each job must see every chunk done exactly
    once before run() returns (the race of a worker still finishing the previous job, issue 21 item 7).
    Built with ThreadSanitizer where the compiler has it."""
    cxx = build.compiler()
    if cxx is None:
        pytest.fail("no C++ compiler: the kernels cannot be built here either")
    src = tmp_path / "stress.cpp"
    src.write_text(f'''
#include "{KERNELS_DIR / 'common.h'}"
#include <cstdio>
namespace paradec {{ Pool& pool() {{ static Pool p(3); return p; }} }}
int main() {{
  using namespace paradec;
  std::vector<std::atomic<int>> hits(5000);
  for (int job = 0; job < 20000; ++job) {{
    const int64_t n = job % 2 ? 4999 : 37, grain = job % 3 + 1;
    for (int64_t i = 0; i < n; ++i) hits[i].store(0);
    parallel(n, grain, [&](int64_t a, int64_t b) {{ for (int64_t i = a; i < b; ++i) hits[i].fetch_add(1); }});
    for (int64_t i = 0; i < n; ++i)
      if (hits[i].load() != 1) {{ std::printf("job %d: chunk %ld ran %d times\\n", job, (long)i, hits[i].load()); return 1; }}
  }}
  std::printf("ok\\n");
  return 0;
}}
''')
    exe = tmp_path / "stress"
    flags = ["-O1", "-g", "-std=c++17", "-pthread"]
    tsan = subprocess.run([cxx, *flags, "-fsanitize=thread", str(src), "-o", str(exe)], capture_output=True, text=True)
    if tsan.returncode != 0:  # no ThreadSanitizer runtime: the stress test alone
        subprocess.run([cxx, *flags, str(src), "-o", str(exe)], check=True)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr
    assert "WARNING: ThreadSanitizer" not in done.stderr, done.stderr


# --- the build, its cache and its fallbacks ---

@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded yet."""
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path))
    kernels.cache_clear()
    yield tmp_path
    kernels.cache_clear()


def test_missing_compiler_falls_back_to_torch_with_a_message(fresh, monkeypatch, caplog):
    monkeypatch.setattr(build, "compiler", lambda: None)
    with caplog.at_level(logging.WARNING):
        assert isinstance(choose_ops(torch.float32), TorchOps)
    assert "needs a C++ compiler" in caplog.text and "falls back to plain torch" in caplog.text
    with pytest.raises(ParadecError, match="needs a C.. compiler"):
        choose_ops(torch.float32, required=True)


def test_a_built_library_is_loaded_as_it_is(monkeypatch, tmp_path):
    """Another checkout, a second process or a Ray replica loads the cached library: no second build."""
    built = build.library()  # the library this session uses, copied into an empty cache
    copy = tmp_path / "kernels" / built.parent.name / built.name
    copy.parent.mkdir(parents=True)
    shutil.copyfile(built, copy)
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("rebuilt a built library"))
    kernels.cache_clear()
    try:
        assert build.library() == copy and kernels().isa in ("avx512-vnni", "avx512bw", "avx2", "scalar")
    finally:
        kernels.cache_clear()


def test_an_unloadable_library_falls_back_with_the_reason(fresh, caplog):
    built = fresh / "kernels" / build.build_key() / "libparadec_kernels.so"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"not a shared library")
    with caplog.at_level(logging.WARNING):
        assert isinstance(choose_ops(torch.float32), TorchOps)
    assert "do not load" in caplog.text


def test_the_build_key_follows_sources_flags_and_compiler(monkeypatch):
    key = build.build_key()
    assert build.build_key("avx2") != key or "avx2" not in VARIANTS
    monkeypatch.setattr(build, "_compiler_version", lambda cxx: "another compiler 1.0")
    assert build.build_key() != key


def test_a_failed_build_names_the_compiler_error(fresh, monkeypatch):
    broken = fresh / "src"
    shutil.copytree(KERNELS_DIR, broken, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (broken / "api.cpp").write_text((broken / "api.cpp").read_text() + "\nthis is not C++;\n")
    monkeypatch.setattr(build, "SOURCES", sorted(broken.glob("*.cpp")))
    with pytest.raises(build.KernelsUnavailable, match="error"):
        build.library()


# --- a model on a head size the vector paths do not cover ---

def test_odd_head_dim_runs_on_the_scalar_tails():
    """head_dim 12 (not a multiple of 8): attention takes its scalar code; logits still follow the float64
    reference, and blocks still give one-row bits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from paradec.model import Model
    from conftest import word_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=36, intermediate_size=64, num_hidden_layers=2, num_attention_heads=3,
                      num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.05, tie_word_embeddings=False)
    hf = LlamaForCausalLM(cfg).eval()
    fast = Model.from_hf(hf, word_tokenizer(96))
    ref = Model.from_hf(hf.double(), word_tokenizer(96))
    ids = [5, 17, 3, 88, 40]
    a = fast.target().forward(ids, list(range(5)))
    b = ref.target().forward(ids, list(range(5)))
    assert torch.allclose(a.double(), b, atol=1e-4)
    t = fast.target()
    t.prefill(ids[:3])
    one = t.forward(ids[3:4], [0])
    t.commit([0])
    assert torch.equal(t.forward(ids[4:5], [0])[0], a[4]) and torch.equal(one[0], a[3])


def test_tiny_model_uses_the_kernels():
    assert isinstance(tiny_model("llama", dtype=torch.float32).runtime.ops, NativeOps)
