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

// Rows [0, M) in parallel when there are many (a prompt); one row's work never depends on the split.
template <class F>
static void per_row(int64_t M, int64_t work_per_row, const F& fn) {
  if (M * work_per_row < 65536) {
    for (int64_t r = 0; r < M; ++r) fn(r);
    return;
  }
  parallel(M, grain_for(work_per_row), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(r);
  });
}

// y = rmsnorm(x) * w, per row
void rmsnorm(const float* x, const float* w, float eps, float* y, int64_t M, int64_t D) {
  per_row(M, D, [&](int64_t r) { rmsnorm_row(x + r * D, w, eps, y + r * D, D); });
}

// h += delta (in place); y = rmsnorm(h) * w: the residual add fused with the next norm
void add_rmsnorm(float* h, const float* delta, const float* w, float eps, float* y, int64_t M, int64_t D) {
  per_row(M, 2 * D, [&](int64_t r) {
    for (int64_t i = r * D; i < (r + 1) * D; ++i) h[i] += delta[i];
    rmsnorm_row(h + r * D, w, eps, y + r * D, D);
  });
}

// [M, 2I] (gate | up) -> [M, I]: silu(gate) * up
void silu_mul(const float* gu, float* y, int64_t M, int64_t I) {
  per_row(M, 8 * I, [&](int64_t r) {
    std::vector<float> e(I);
    const float* g = gu + r * 2 * I;
    const float* u = g + I;
    float* out = y + r * I;
    for (int64_t i = 0; i < I; ++i) e[i] = -g[i];
    exp_inplace(e.data(), I);
    for (int64_t i = 0; i < I; ++i) out[i] = g[i] / (1.f + e[i]) * u[i];
  });
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
  for (int64_t r = 0; r < rows.M; ++r) {  // checked here: a kernel thread must not throw
    const int64_t pos = rows.positions[r], seq = rows.store[2 * r], slot = rows.store[2 * r + 1];
    check(pos >= 0 && pos < rows.P, "position " + std::to_string(pos) + " outside the rotary tables");
    check(seq >= 0 && seq < rows.sequences, "row of an unknown sequence");
    check(slot >= 0 && slot < rows.caps[seq],
          "KV slot " + std::to_string(slot) + " outside the cache (capacity " + std::to_string(rows.caps[seq]) + ")");
  }
  per_row(rows.M, 2 * W, [&](int64_t r) {
    std::vector<float> tmp(D);
    const float* row = qkv + r * W;
    const float* c = rows.cos + rows.positions[r] * (D / 2);
    const float* s = rows.sin + rows.positions[r] * (D / 2);
    for (int64_t h = 0; h < H; ++h) rope_row(row + h * D, c, s, D, q + (r * H + h) * D);
    const int64_t seq = rows.store[2 * r], slot = rows.store[2 * r + 1], cap = rows.caps[seq];
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
  });
}

}  // namespace paradec
