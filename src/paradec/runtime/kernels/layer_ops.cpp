// The small per-row operations of a layer: RMSNorm (fused with the residual add), SiLU-gate, rotary
// embedding + KV store.

#include "api.h"

namespace paradec {

static void rmsnorm_row(const float* x, const float* w, float eps, float* y, int64_t D) {
  float ss = 0.f;
  int64_t k = 0;
#if PD_AVX2
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
void rmsnorm(const float* x, const float* w, float eps, float* y, int64_t M, int64_t D) {
  for (int64_t r = 0; r < M; ++r) rmsnorm_row(x + r * D, w, eps, y + r * D, D);
}

// h += delta (in place); y = rmsnorm(h) * w: the residual add fused with the next norm
void add_rmsnorm(float* h, const float* delta, const float* w, float eps, float* y, int64_t M, int64_t D) {
  for (int64_t i = 0; i < M * D; ++i) h[i] += delta[i];
  rmsnorm(h, w, eps, y, M, D);
}

// [M, 2I] (gate | up) -> [M, I]: silu(gate) * up
void silu_mul(const float* gu, float* y, int64_t M, int64_t I) {
  std::vector<float> e(I);
  for (int64_t r = 0; r < M; ++r) {
    const float* g = gu + r * 2 * I;
    const float* u = g + I;
    float* out = y + r * I;
    for (int64_t i = 0; i < I; ++i) e[i] = -g[i];
    exp_inplace(e.data(), I);
    for (int64_t i = 0; i < I; ++i) out[i] = g[i] / (1.f + e[i]) * u[i];
  }
}

// Rotation as transformers' rotate_half: x1 = x[:D/2], x2 = x[D/2:] -> (x1 c - x2 s, x2 c + x1 s).
static void rope_row(const float* x, const float* c, const float* s, int64_t D, float* out) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) {
    out[i] = x[i] * c[i] - x[i + h] * s[i];
    out[i + h] = x[i + h] * c[i] + x[i] * s[i];
  }
}

// qkv [M, (H + 2 Hkv) D] (q heads, k heads, v heads) -> q [M, H, D] rotated; each row's rotated key
// and its value are written to its (sequence, slot) of the layer's cache.
void rope_store(const pd_model& m, int64_t layer, const pd_rows& rows, const float* qkv, float* q) {
  const int64_t H = m.heads, Hkv = m.kv_heads, D = m.head_dim, W = (H + 2 * Hkv) * D;
  std::vector<float> tmp(D);
  for (int64_t r = 0; r < rows.M; ++r) {
    const float* row = qkv + r * W;
    const int64_t pos = rows.positions[r];
    check(pos >= 0 && pos < rows.P, "position " + std::to_string(pos) + " outside the rotary tables");
    const float* c = rows.cos + pos * (D / 2);
    const float* s = rows.sin + pos * (D / 2);
    for (int64_t h = 0; h < H; ++h) rope_row(row + h * D, c, s, D, q + (r * H + h) * D);
    const int64_t seq = rows.store[2 * r], slot = rows.store[2 * r + 1];
    check(seq >= 0 && seq < rows.sequences, "row of an unknown sequence");
    const int64_t cap = rows.caps[seq];
    check(slot >= 0 && slot < cap, "KV slot " + std::to_string(slot) + " outside the cache (capacity " + std::to_string(cap) + ")");
    for (int64_t g = 0; g < Hkv; ++g) {
      rope_row(row + (H + g) * D, c, s, D, tmp.data());
      const int64_t koff = (((layer * 2 + 0) * Hkv + g) * cap + slot) * D;
      const int64_t voff = (((layer * 2 + 1) * Hkv + g) * cap + slot) * D;
      const float* v = row + (H + Hkv + g) * D;
      if (m.kv_bf16) {
        uint16_t* cache = static_cast<uint16_t*>(rows.caches[seq]);
        for (int64_t i = 0; i < D; ++i) cache[koff + i] = float_to_bf16(tmp[i]), cache[voff + i] = float_to_bf16(v[i]);
      } else {
        float* cache = static_cast<float*>(rows.caches[seq]);
        std::memcpy(cache + koff, tmp.data(), D * sizeof(float));
        std::memcpy(cache + voff, v, D * sizeof(float));
      }
    }
  }
}

}  // namespace paradec
