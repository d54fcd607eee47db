// Matrix products y = x @ W^T for every weight format, and embedding rows of quantised tables.

#include "common.h"

namespace paradec {

// ---------------------------------------------------------------------------------------------
// linear: y[M, N] = x[M, K] @ W^T (+ bias)
// ---------------------------------------------------------------------------------------------
// Float weights (f32, bf16) are turned into float32 in registers, 32 at a time, and multiplied
// with float32 activations. Each (output n, row r) pair owns one 8-lane accumulator that gets, per
// 32-weight chunk, the same four FMAs in the same order, then one horizontal sum: the same
// arithmetic whatever M is and however the rows are tiled.

namespace {

struct F32W {
  const float* w;
  int64_t K;
#if PARADEC_AVX2
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
#if PARADEC_AVX2
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
#if PARADEC_AVX2
  inline void load(int64_t n, int64_t c, __m256* v) const {
    const uint16_t* p = w + (n / 4) * 4 * K + c * 4 * QK + (n % 4) * QK;
    for (int j = 0; j < 4; ++j) v[j] = load_bf16(p + 8 * j);
  }
#endif
  inline float at(int64_t n, int64_t k) const { return bf16_to_float(w[(n / 4) * 4 * K + (k / QK) * 4 * QK + (n % 4) * QK + k % QK]); }
};

// Outputs n0 .. n0+NT-1 for rows r0 .. r0+RT-1.
template <int NT, int RT, class W>
inline void tile(const W& wt, int64_t n0, int64_t r0, const float* x, int64_t K, int64_t N, const float* bias, float* y) {
  const int64_t chunks = K / QK;
#if PARADEC_AVX2
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
#if PARADEC_AVX2
      float s = hsum(acc[i][r]);
      const int64_t from = chunks * QK;
#else
      float s = 0.f;
      const int64_t from = 0;
#endif
      for (int64_t k = from; k < K; ++k) s += wt.at(n0 + i, k) * x[(r0 + r) * K + k];
      y[(r0 + r) * N + n0 + i] = bias ? s + bias[n0 + i] : s;
    }
}

// Outputs [n0, n1) in tiles of NT, rows [r0, r1) in tiles of RT (smaller tiles at the edges).
template <int NT, int RT, class W>
void block(const W& wt, int64_t n0, int64_t n1, int64_t r0, int64_t r1, const float* x, int64_t K, int64_t N,
           const float* bias, float* y) {
  for (int64_t n = n0; n < n1; n += NT) {
    if (n + NT > n1) {
      for (int64_t i = n; i < n1; ++i) block<1, RT>(wt, i, i + 1, r0, r1, x, K, N, bias, y);
      break;
    }
    int64_t r = r0;
    for (; r + RT <= r1; r += RT) tile<NT, RT>(wt, n, r, x, K, N, bias, y);
    for (; r < r1; ++r) tile<NT, 1>(wt, n, r, x, K, N, bias, y);
  }
}

constexpr int64_t NT = 4;   // outputs per thread work item (and per tile when M <= 2)
constexpr int64_t RB = 64;  // rows per block: a block's activations stay in cache while a thread's outputs pass

template <class W>
void gemm(const W& wt, int64_t M, int64_t N, int64_t K, const float* x, const float* bias, float* y) {
  parallel((N + NT - 1) / NT, grain_for(K * std::min(M, RB) * NT), [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * NT, n1 = std::min(N, t1 * NT);
    for (int64_t r0 = 0; r0 < M; r0 += RB) {
      const int64_t r1 = std::min(M, r0 + RB);
      if (r1 - r0 == 1) block<4, 1>(wt, n0, n1, r0, r1, x, K, N, bias, y);
      else if (r1 - r0 == 2) block<4, 2>(wt, n0, n1, r0, r1, x, K, N, bias, y);
      else block<2, 4>(wt, n0, n1, r0, r1, x, K, N, bias, y);
    }
  });
}

// Quantised weights (q8, q4) are multiplied with int8 activations, as llama.cpp does: each row
// of x is quantised per 32-block (d = max|x| / 127, q = round(x / d)), the block dot products are
// exact integer sums, and each (output, row) accumulator gets per block one FMA with the scale
// d_w * d_x, in block order. On AVX2 this costs ~2.5x fewer instructions per weight than
// converting the weights to float, which matters most for one-row steps.
struct QAct {
  std::vector<int8_t> q;    // [M, K]
  std::vector<float> d, s;  // [M, NBP]: scale, scale * sum(q) (the q4 minimum's partner); zero-padded
  int64_t K, nb, nbp;       // chunks, chunks rounded up to whole groups of 8

  QAct(const float* x, int64_t M, int64_t K_)
      : q(M * K_), K(K_), nb(K_ / QK), nbp((K_ / QK + 7) / 8 * 8) {
    d.assign(M * nbp, 0.f);
    s.assign(M * nbp, 0.f);
    for (int64_t r = 0; r < M; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + r * K + b * QK;
        float amax = 0.f;
        for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(xb[j]));
        const float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
        int32_t sum = 0;
        for (int j = 0; j < QK; ++j) {
          const int v = std::min(127, std::max(-127, static_cast<int>(std::nearbyint(xb[j] * inv))));
          q[r * K + b * QK + j] = static_cast<int8_t>(v);
          sum += v;
        }
        d[r * nbp + b] = scale;
        s[r * nbp + b] = scale * float(sum);
      }
  }
};

// Quantised weights come in tiles of 4 output rows (see weights.py, which packs them): per group
// of 8 chunks of 32 weights,
//   q4: [d: 4 x 8 f16][m: 4 x 8 f16][q: chunk-major, 4 rows x 16 bytes each]   w = d * q + m
//   q8: [d: 4 x 8 f16][q: chunk-major, 4 rows x 32 bytes each]                 w = d * q
// (the last group may hold fewer than 8 chunks; its d/m slots are zero-padded). A tile is one
// contiguous stream, and a group's scales load as vectors: 8 chunks at once.

struct Q8T {
  static constexpr int64_t QB = QK, HDR = 64;
  static constexpr bool has_min = false;
#if PARADEC_AVX2
  // (|w|, w) for the sign trick: maddubs multiplies unsigned by signed bytes
  static inline void load(const uint8_t* q, __m256i& a, __m256i& sgn) {
    sgn = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    a = _mm256_sign_epi8(sgn, sgn);
  }
  static inline __m256i signed_x(__m256i x, __m256i sgn) { return _mm256_sign_epi8(x, sgn); }
#endif
  static inline int32_t idot(const uint8_t* q, const int8_t* x) {
    int32_t acc = 0;
    for (int j = 0; j < QK; ++j) acc += int32_t(static_cast<int8_t>(q[j])) * int32_t(x[j]);
    return acc;
  }
};

struct Q4T {
  static constexpr int64_t QB = QK / 2, HDR = 128;
  static constexpr bool has_min = true;
#if PARADEC_AVX2
  static inline void load(const uint8_t* q, __m256i& a, __m256i&) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    a = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
  }
  static inline __m256i signed_x(__m256i x, __m256i) { return x; }
#endif
  static inline int32_t idot(const uint8_t* q, const int8_t* x) {
    int32_t acc = 0;
    for (int j = 0; j < QK / 2; ++j) acc += int32_t(q[j] & 0x0F) * int32_t(x[j]) + int32_t(q[j] >> 4) * int32_t(x[j + 16]);
    return acc;
  }
};

template <class W>
struct Tiles {
  const uint8_t* w;
  int64_t K, nb, ng;
  static constexpr int64_t GROUP = W::HDR + 8 * 4 * W::QB;  // bytes of a full group
  Tiles(const uint8_t* w_, int64_t K_) : w(w_), K(K_), nb(K_ / QK), ng((K_ / QK + 7) / 8) {}
  int64_t tile_bytes() const { return (nb / 8) * GROUP + (nb % 8 ? W::HDR + (nb % 8) * 4 * W::QB : 0); }
};

// Outputs 4t .. 4t+3 (those below N) for rows r0 .. r0+RT-1. Per (output, row) one accumulator gets,
// group by group, the minimum term (q4: 8 chunk lanes at once), then one FMA per chunk in order.
template <int RT, class W>
inline void qtile(const Tiles<W>& T, int64_t t, int64_t r0, const QAct& xa, int64_t N, const float* bias, float* y) {
  const uint8_t* tile = T.w + t * T.tile_bytes();
  const int64_t K = xa.K, nbp = xa.nbp;
#if PARADEC_AVX2
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[4][RT];
  for (int i = 0; i < 4; ++i)
    for (int r = 0; r < RT; ++r) acc[i][r] = _mm256_setzero_ps();
  alignas(32) float sc[4][RT][8];
  for (int64_t g = 0; g < T.ng; ++g) {
    const uint8_t* G = tile + g * Tiles<W>::GROUP;
    const int64_t cg = std::min<int64_t>(8, T.nb - 8 * g);
    for (int i = 0; i < 4; ++i) {
      const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(G + 16 * i)));
      for (int r = 0; r < RT; ++r) _mm256_store_ps(sc[i][r], _mm256_mul_ps(dv, _mm256_loadu_ps(xa.d.data() + (r0 + r) * nbp + 8 * g)));
      if (W::has_min) {
        const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(G + 64 + 16 * i)));
        for (int r = 0; r < RT; ++r) acc[i][r] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(xa.s.data() + (r0 + r) * nbp + 8 * g), acc[i][r]);
      }
    }
    const uint8_t* Q = G + W::HDR;
    for (int64_t c = 0; c < cg; ++c) {
      __m256i xv[RT];
      for (int r = 0; r < RT; ++r) xv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa.q.data() + (r0 + r) * K + (8 * g + c) * QK));
      for (int i = 0; i < 4; ++i) {
        __m256i a, sgn;
        W::load(Q + (c * 4 + i) * W::QB, a, sgn);
        for (int r = 0; r < RT; ++r) {
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, W::signed_x(xv[r], sgn)), ones);
          acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&sc[i][r][c]), acc[i][r]);
        }
      }
    }
  }
  for (int i = 0; i < 4 && 4 * t + i < N; ++i)
    for (int r = 0; r < RT; ++r) {
      const float v = hsum(acc[i][r]);
      y[(r0 + r) * N + 4 * t + i] = bias ? v + bias[4 * t + i] : v;
    }
#else
  for (int i = 0; i < 4 && 4 * t + i < N; ++i)
    for (int r = 0; r < RT; ++r) {
      float v = 0.f;
      for (int64_t g = 0; g < T.ng; ++g) {
        const uint8_t* G = tile + g * Tiles<W>::GROUP;
        for (int64_t c = 0; c < std::min<int64_t>(8, T.nb - 8 * g); ++c) {
          const int64_t b = 8 * g + c;
          const float scale = f16(G + 16 * i + 2 * c) * xa.d[(r0 + r) * nbp + b];
          v += scale * float(W::idot(G + W::HDR + (c * 4 + i) * W::QB, xa.q.data() + (r0 + r) * K + b * QK));
          if (W::has_min) v += f16(G + 64 + 16 * i + 2 * c) * xa.s[(r0 + r) * nbp + b];
        }
      }
      y[(r0 + r) * N + 4 * t + i] = bias ? v + bias[4 * t + i] : v;
    }
#endif
}

template <class W>
void qgemm(const Tiles<W>& T, int64_t M, int64_t N, const float* x, const float* bias, float* y) {
  const QAct xa(x, M, T.K);
  parallel((N + 3) / 4, grain_for(T.K * std::min(M, RB)), [&](int64_t t0, int64_t t1) {
    for (int64_t r0 = 0; r0 < M; r0 += RB) {
      const int64_t r1 = std::min(M, r0 + RB);
      for (int64_t t = t0; t < t1; ++t) {
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) qtile<2>(T, t, r, xa, N, bias, y);
        if (r < r1) qtile<1>(T, t, r, xa, N, bias, y);
      }
    }
  });
}

}  // namespace

// Rows idx of a tiled q8/q4 matrix as float32 [len(idx), K]: the embedding lookup of a quantised table.
template <class W>
static void rows_of(const Tiles<W>& T, const int64_t* idx, int64_t n, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* tile = T.w + (idx[r] / 4) * T.tile_bytes();
    const int64_t i = idx[r] % 4;
    for (int64_t b = 0; b < T.nb; ++b) {
      const uint8_t* G = tile + (b / 8) * Tiles<W>::GROUP;
      const int64_t c = b % 8;
      const float d = f16(G + 16 * i + 2 * c), m = W::has_min ? f16(G + 64 + 16 * i + 2 * c) : 0.f;
      const uint8_t* q = G + W::HDR + (c * 4 + i) * W::QB;
      float* o = out + r * T.K + b * QK;
      for (int j = 0; j < QK; ++j) {
        if (W::has_min) {
          const int v = j < 16 ? (q[j] & 0x0F) : (q[j - 16] >> 4);
          o[j] = float(v) * d + m;
        } else {
          o[j] = float(static_cast<int8_t>(q[j])) * d;
        }
      }
    }
  }
}

at::Tensor dequant_rows(at::Tensor w, const std::string& fmt, int64_t K, at::Tensor idx) {
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.is_contiguous(), "idx must be contiguous int64");
  auto out = at::empty({idx.numel(), K}, at::kFloat);
  if (fmt == "q8") rows_of(Tiles<Q8T>(w.data_ptr<uint8_t>(), K), idx.data_ptr<int64_t>(), idx.numel(), out.data_ptr<float>());
  else if (fmt == "q4") rows_of(Tiles<Q4T>(w.data_ptr<uint8_t>(), K), idx.data_ptr<int64_t>(), idx.numel(), out.data_ptr<float>());
  else TORCH_CHECK(false, "dequant_rows takes q8 or q4 tiles, got ", fmt);
  return out;
}

// n: output features (for tiled formats w has one row per 4 of them)
at::Tensor linear(at::Tensor x, const std::string& fmt, at::Tensor w, int64_t N, c10::optional<at::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous float [M, K]");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(fmt == "q4" || fmt == "q8" || w.size(0) == N || w.size(1) == 4 * K, "weight has ", w.size(0),
              " rows, expected ", N);
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weight must be a contiguous matrix");
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  if (fmt == "f32") {
    TORCH_CHECK(w.scalar_type() == at::kFloat, "f32 weight must be float32");
    const F32W wt{w.data_ptr<float>(), K};
    py::gil_scoped_release no_gil;
    gemm(wt, M, N, K, xp, bp, yp);
  } else if (fmt == "bf16") {
    TORCH_CHECK(w.scalar_type() == at::kBFloat16, "bf16 weight must be bfloat16");
    const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    py::gil_scoped_release no_gil;
    if (w.size(1) == 4 * K && K % QK == 0) gemm(BF16T{wp, K}, M, N, K, xp, bp, yp);  // tiled: (ceil(N/4), 4K)
    else gemm(BF16W{wp, K}, M, N, K, xp, bp, yp);
  } else if (fmt == "q8") {
    const Tiles<Q8T> T(w.data_ptr<uint8_t>(), K);
    TORCH_CHECK(w.scalar_type() == at::kByte && K % QK == 0 && w.size(1) == T.tile_bytes() && 4 * w.size(0) >= N,
                "q8 needs uint8 tiles of K = ", K);
    py::gil_scoped_release no_gil;
    qgemm(T, M, N, xp, bp, yp);
  } else if (fmt == "q4") {
    const Tiles<Q4T> T(w.data_ptr<uint8_t>(), K);
    TORCH_CHECK(w.scalar_type() == at::kByte && K % QK == 0 && w.size(1) == T.tile_bytes() && 4 * w.size(0) >= N,
                "q4 needs uint8 tiles of K = ", K);
    py::gil_scoped_release no_gil;
    qgemm(T, M, N, xp, bp, yp);
  } else {
    TORCH_CHECK(false, "unknown weight format ", fmt);
  }
  return y;
}

}  // namespace paradec
