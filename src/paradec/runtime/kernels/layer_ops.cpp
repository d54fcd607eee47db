// The small per-row operations of a layer: RMSNorm (fused with the residual add), SiLU-gate, rotary embedding + KV store.

#include "common.h"

namespace paradec {

// ---------------------------------------------------------------------------------------------
// norms and activations
// ---------------------------------------------------------------------------------------------
static void rmsnorm_row(const float* x, const float* w, float eps, float* y, int64_t D) {
  float ss = 0.f;
  int64_t k = 0;
#if PARADEC_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; k + 8 <= D; k += 8) {
    __m256 v = _mm256_loadu_ps(x + k);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  ss = hsum(acc);
#endif
  for (; k < D; ++k) ss += x[k] * x[k];
  const float inv = 1.f / std::sqrt(ss / float(D) + eps);
  for (int64_t i = 0; i < D; ++i) y[i] = w[i] * (x[i] * inv);
}

// y = rmsnorm(x) * w, per row
at::Tensor rmsnorm(at::Tensor x, at::Tensor w, double eps) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat, "x must be contiguous float");
  const int64_t D = x.size(-1), M = x.numel() / D;
  auto y = at::empty_like(x);
  for (int64_t r = 0; r < M; ++r) rmsnorm_row(x.data_ptr<float>() + r * D, w.data_ptr<float>(), float(eps), y.data_ptr<float>() + r * D, D);
  return y;
}

// h += delta (in place); returns rmsnorm(h) * w: the residual add fused with the next norm
at::Tensor add_rmsnorm(at::Tensor h, at::Tensor delta, at::Tensor w, double eps) {
  TORCH_CHECK(h.is_contiguous() && delta.is_contiguous() && h.sizes() == delta.sizes(), "h and delta must match");
  const int64_t D = h.size(-1), M = h.numel() / D;
  float* hp = h.data_ptr<float>();
  const float* dp = delta.data_ptr<float>();
  for (int64_t i = 0; i < M * D; ++i) hp[i] += dp[i];
  auto y = at::empty_like(h);
  for (int64_t r = 0; r < M; ++r) rmsnorm_row(hp + r * D, w.data_ptr<float>(), float(eps), y.data_ptr<float>() + r * D, D);
  return y;
}

// [M, 2I] (gate | up) -> [M, I]: silu(gate) * up
at::Tensor silu_mul(at::Tensor gu) {
  TORCH_CHECK(gu.is_contiguous() && gu.dim() == 2, "gate_up must be contiguous [M, 2I]");
  const int64_t M = gu.size(0), I = gu.size(1) / 2;
  auto y = at::empty({M, I}, gu.options());
  std::vector<float> e(I);
  for (int64_t r = 0; r < M; ++r) {
    const float* g = gu.data_ptr<float>() + r * 2 * I;
    const float* u = g + I;
    float* out = y.data_ptr<float>() + r * I;
    for (int64_t i = 0; i < I; ++i) e[i] = -g[i];
    exp_inplace(e.data(), I);
    for (int64_t i = 0; i < I; ++i) out[i] = g[i] / (1.f + e[i]) * u[i];
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// rotary embedding + KV store
// ---------------------------------------------------------------------------------------------
// qkv: [M, (H + 2 Hkv) * D] (q heads, k heads, v heads); cos/sin: [P, D/2]; pos: [M] positions;
// caches[seq]: [layers, 2, Hkv, cap, D] float or bf16; rows[r] = (seq, slot): where row r's k/v go.
// Rotation as transformers' rotate_half: x1 = x[:D/2], x2 = x[D/2:] -> (x1 c - x2 s, x2 c + x1 s).
// Returns q [M, H, D] rotated.
template <typename T>
static inline void store(T* dst, const float* src, int64_t D);
template <>
inline void store<float>(float* dst, const float* src, int64_t D) { std::memcpy(dst, src, D * sizeof(float)); }
template <>
inline void store<at::BFloat16>(at::BFloat16* dst, const float* src, int64_t D) {
  for (int64_t i = 0; i < D; ++i) dst[i] = at::BFloat16(src[i]);  // round to nearest even
}

static void rope_row(const float* x, const float* c, const float* s, int64_t D, float* out) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) {
    out[i] = x[i] * c[i] - x[i + h] * s[i];
    out[i + h] = x[i + h] * c[i] + x[i] * s[i];
  }
}

at::Tensor rope_store(at::Tensor qkv, int64_t H, int64_t Hkv, at::Tensor cos, at::Tensor sin,
                         at::Tensor pos, std::vector<at::Tensor> caches, at::Tensor rows, int64_t layer) {
  const int64_t M = qkv.size(0), D = cos.size(1) * 2;
  TORCH_CHECK(qkv.is_contiguous() && qkv.size(1) == (H + 2 * Hkv) * D, "qkv has the wrong shape");
  auto q = at::empty({M, H, D}, qkv.options());
  const int64_t* pp = pos.data_ptr<int64_t>();
  const int64_t* rp = rows.data_ptr<int64_t>();  // [M, 2]
  std::vector<float> tmp(D);
  for (int64_t r = 0; r < M; ++r) {
    const float* row = qkv.data_ptr<float>() + r * (H + 2 * Hkv) * D;
    const float* c = cos.data_ptr<float>() + pp[r] * (D / 2);
    const float* s = sin.data_ptr<float>() + pp[r] * (D / 2);
    for (int64_t h = 0; h < H; ++h) rope_row(row + h * D, c, s, D, q.data_ptr<float>() + (r * H + h) * D);
    at::Tensor& cache = caches[rp[2 * r]];
    const int64_t cap = cache.size(3), slot = rp[2 * r + 1];
    TORCH_CHECK(slot >= 0 && slot < cap, "KV slot ", slot, " outside the cache (capacity ", cap, ")");
    for (int64_t g = 0; g < Hkv; ++g) {
      rope_row(row + (H + g) * D, c, s, D, tmp.data());
      const int64_t koff = (((layer * 2 + 0) * Hkv + g) * cap + slot) * D;
      const int64_t voff = (((layer * 2 + 1) * Hkv + g) * cap + slot) * D;
      const float* v = row + (H + Hkv + g) * D;
      if (cache.scalar_type() == at::kFloat) {
        store<float>(cache.data_ptr<float>() + koff, tmp.data(), D);
        store<float>(cache.data_ptr<float>() + voff, v, D);
      } else {
        store<at::BFloat16>(cache.data_ptr<at::BFloat16>() + koff, tmp.data(), D);
        store<at::BFloat16>(cache.data_ptr<at::BFloat16>() + voff, v, D);
      }
    }
  }
  return q;
}

}  // namespace paradec
