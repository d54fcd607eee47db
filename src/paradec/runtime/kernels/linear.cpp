// Matrix products y = x @ W^T for every weight format: float weights here, quantised ones through
// qlinear.cpp; a layer may stack parts of different formats along its outputs (q | k | v).

#include "api.h"

namespace paradec {

namespace {

// Float weights (f32, bf16) are turned into float32 in registers, 32 at a time, and multiplied
// with float32 activations. Each (output n, row r) pair owns one 8-lane accumulator that gets, per
// 32-weight chunk, the same four FMAs in the same order, then one horizontal sum: the same
// arithmetic whatever M is and however the rows are tiled.
constexpr int64_t QK = 32;

struct F32W {
  const float* w;
  int64_t K;
#if PD_AVX2
  inline void load(int64_t n, int64_t c, __m256* v) const {
    const float* p = w + n * K + c * QK;
    for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(p + 8 * j);
  }
#endif
  inline float at(int64_t n, int64_t k) const { return w[n * K + k]; }
};

struct BF16W {
  const uint16_t* w;
  int64_t K;
#if PD_AVX2
  inline void load(int64_t n, int64_t c, __m256* v) const {
    const uint16_t* p = w + n * K + c * QK;
    for (int j = 0; j < 4; ++j) v[j] = load_bf16(p + 8 * j);
  }
#endif
  inline float at(int64_t n, int64_t k) const { return bf16_to_float(w[n * K + k]); }
};

// bf16 in tiles of 4 rows (weights.py packs them when K % 32 == 0): per 32-column chunk the 4 rows'
// values side by side, so a tile is one memory stream (bf16 decoding is bandwidth-bound).
struct BF16T {
  const uint16_t* w;
  int64_t K;
#if PD_AVX2
  inline void load(int64_t n, int64_t c, __m256* v) const {
    const uint16_t* p = w + (n / 4) * 4 * K + c * 4 * QK + (n % 4) * QK;
    for (int j = 0; j < 4; ++j) v[j] = load_bf16(p + 8 * j);
  }
#endif
  inline float at(int64_t n, int64_t k) const { return bf16_to_float(w[(n / 4) * 4 * K + (k / QK) * 4 * QK + (n % 4) * QK + k % QK]); }
};

// Outputs n0 .. n0+NT-1 for rows r0 .. r0+RT-1.
template <int NT, int RT, class W>
inline void tile(const W& wt, int64_t n0, int64_t r0, const float* x, int64_t K, int64_t ldy, const float* bias, float* y) {
  const int64_t chunks = K / QK;
#if PD_AVX2
  __m256 acc[NT][RT];
  for (int i = 0; i < NT; ++i)
    for (int r = 0; r < RT; ++r) acc[i][r] = _mm256_setzero_ps();
  __m256 v[4];
  for (int64_t c = 0; c < chunks; ++c)
    for (int i = 0; i < NT; ++i) {
      wt.load(n0 + i, c, v);
      for (int r = 0; r < RT; ++r) {
        const float* xr = x + (r0 + r) * K + c * QK;
        for (int j = 0; j < 4; ++j) acc[i][r] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xr + 8 * j), acc[i][r]);
      }
    }
#endif
  for (int i = 0; i < NT; ++i)
    for (int r = 0; r < RT; ++r) {
#if PD_AVX2
      float s = hsum(acc[i][r]);
      const int64_t from = chunks * QK;
#else
      float s = 0.f;
      const int64_t from = 0;
#endif
      for (int64_t k = from; k < K; ++k) s += wt.at(n0 + i, k) * x[(r0 + r) * K + k];
      y[(r0 + r) * ldy + n0 + i] = bias ? s + bias[n0 + i] : s;
    }
}

// Outputs [n0, n1) in tiles of NT, rows [r0, r1) in tiles of RT (smaller tiles at the edges).
template <int NT, int RT, class W>
void block(const W& wt, int64_t n0, int64_t n1, int64_t r0, int64_t r1, const float* x, int64_t K, int64_t ldy,
           const float* bias, float* y) {
  for (int64_t n = n0; n < n1; n += NT) {
    if (n + NT > n1) {
      for (int64_t i = n; i < n1; ++i) block<1, RT>(wt, i, i + 1, r0, r1, x, K, ldy, bias, y);
      break;
    }
    int64_t r = r0;
    for (; r + RT <= r1; r += RT) tile<NT, RT>(wt, n, r, x, K, ldy, bias, y);
    for (; r < r1; ++r) tile<NT, 1>(wt, n, r, x, K, ldy, bias, y);
  }
}

constexpr int64_t NT = 4;   // outputs per thread work item (and per tile when M <= 2)
constexpr int64_t RB = 64;  // rows per block: a block's activations stay in cache while a thread's outputs pass

template <class W>
void fgemm(const W& wt, int64_t M, int64_t N, int64_t K, const float* x, const float* bias, float* y, int64_t ldy) {
  parallel((N + NT - 1) / NT, grain_for(K * std::min(M, RB) * NT), [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * NT, n1 = std::min(N, t1 * NT);
    for (int64_t r0 = 0; r0 < M; r0 += RB) {
      const int64_t r1 = std::min(M, r0 + RB);
      if (r1 - r0 == 1) block<4, 1>(wt, n0, n1, r0, r1, x, K, ldy, bias, y);
      else if (r1 - r0 == 2) block<4, 2>(wt, n0, n1, r0, r1, x, K, ldy, bias, y);
      else block<2, 4>(wt, n0, n1, r0, r1, x, K, ldy, bias, y);
    }
  });
}

}  // namespace

void linear(const pd_linear& lin, int64_t M, const float* x, float* y) {
  const int64_t K = lin.K;
  check(lin.nparts >= 1 && lin.nparts <= PD_MAX_PARTS, "a linear layer has 1 to 4 parts");
  int64_t total = 0;
  for (int p = 0; p < lin.nparts; ++p) {
    total += lin.parts[p].N;
    check(!is_quant(lin.parts[p].fmt) || K % qformat(lin.parts[p].fmt).lane == 0, "quantised rows must hold whole lanes");
  }
  check(total == lin.N, "a linear layer's parts do not add up to its outputs");
  std::unique_ptr<QAct> acts[2];  // activations quantised once per lane width (32, 16)
  int64_t off = 0;
  for (int p = 0; p < lin.nparts; ++p) {
    const pd_part& part = lin.parts[p];
    const float* bias = lin.bias ? lin.bias + off : nullptr;
    float* yp = y + off;
    if (is_quant(part.fmt)) {
      const int S = qformat(part.fmt).lane;
      std::unique_ptr<QAct>& a = acts[S == 32 ? 0 : 1];
      if (!a) a.reset(new QAct(x, M, K, S));
      qgemm(part.fmt, static_cast<const uint8_t*>(part.w), part.N, K, *a, bias, yp, lin.N);
    } else if (part.fmt == F32) {
      fgemm(F32W{static_cast<const float*>(part.w), K}, M, part.N, K, x, bias, yp, lin.N);
    } else if (part.fmt == BF16) {
      fgemm(BF16W{static_cast<const uint16_t*>(part.w), K}, M, part.N, K, x, bias, yp, lin.N);
    } else if (part.fmt == BF16_TILED) {
      check(K % QK == 0, "tiled bf16 needs K divisible by 32");
      fgemm(BF16T{static_cast<const uint16_t*>(part.w), K}, M, part.N, K, x, bias, yp, lin.N);
    } else {
      throw Error("unknown weight format " + std::to_string(part.fmt));
    }
    off += part.N;
  }
}

void linear_rows(const pd_linear& lin, const int64_t* idx, int64_t n, float* out) {
  check(lin.nparts == 1, "an embedding table has one part");
  const pd_part& part = lin.parts[0];
  const int64_t K = lin.K;
  for (int64_t r = 0; r < n; ++r) check(idx[r] >= 0 && idx[r] < lin.N, "token id " + std::to_string(idx[r]) +
                                                                          " outside the vocabulary (size " + std::to_string(lin.N) + ")");
  if (is_quant(part.fmt)) return qrows(part.fmt, static_cast<const uint8_t*>(part.w), K, idx, n, out);
  for (int64_t r = 0; r < n; ++r) {
    float* o = out + r * K;
    const int64_t i = idx[r];
    if (part.fmt == F32) {
      std::memcpy(o, static_cast<const float*>(part.w) + i * K, K * sizeof(float));
    } else if (part.fmt == BF16) {
      for (int64_t k = 0; k < K; ++k) o[k] = bf16_to_float(static_cast<const uint16_t*>(part.w)[i * K + k]);
    } else if (part.fmt == BF16_TILED) {
      const BF16T t{static_cast<const uint16_t*>(part.w), K};
      for (int64_t k = 0; k < K; ++k) o[k] = t.at(i, k);
    } else {
      throw Error("unknown weight format " + std::to_string(part.fmt));
    }
  }
}

}  // namespace paradec
