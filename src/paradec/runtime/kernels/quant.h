// Quantised weight formats and 8-bit activations: the layouts the integer kernels read.
//
// Every quantised format is read as *lanes*: a lane is a run of S consecutive weights of one output
// (S = 32, or 16 for Q6_K) that share one float scale (and, for formats with a minimum, one float
// minimum); the weight is  scale * (stored - offset) + minimum  with a small integer `stored`.
// A *group* is 16 lanes of one output side by side (512 or 256 weights), the last group of a row
// may hold fewer lanes (L < 16). Weights and activations are stored *slice-major* inside a group:
// slice s of lane j is that lane's weights 4s .. 4s+3, and a slice of all lanes is one 64-byte
// vector (4 bytes per lane). So one vpdpbusd over a slice adds, in lane j, 4 products of lane j
// only: after the group's S/4 slices lane j holds the exact integer dot product of its S weights
// with the row's S activations, and one convert and one FMA per group (16 lanes at once) apply the
// lanes' scales. The float work is per 512 weights, not per 32.
//
// Formats (GGML's blocks, values byte for byte; only their order is regrouped):
//   q8_0  S=32  stored int8 (offset 0)           scale d            header 16 x f16 d
//   q4_0  S=32  stored 0..15 (offset 8)          scale d            header 16 x f16 d
//   q4_1  S=32  stored 0..15                     scale d, min m     header 16 x f16 d, 16 x f16 m
//   q5_0  S=32  stored 0..31 (offset 16)         scale d            header as q4_0
//   q5_1  S=32  stored 0..31                     scale d, min m     header as q4_1
//   q4_k  S=32  stored 0..15                     scale d*sc, min -dmin*m   header per super-block
//   q5_k  S=32  stored 0..31 (4 bits + a 5th)    as q4_k                  (256 weights = 8 lanes):
//                                                                   f16 d, f16 dmin, u8 sc[8], u8 m[8]
//   q6_k  S=16  stored 0..63 (offset 32)         scale d*sc (int8 sc)      header f16 d, int8 sc[16]
// 4-bit data: 4 vectors of 64 bytes per group; vector t holds slice t in its low nibbles and slice
// t+4 in its high nibbles (q6_k: 2 vectors, slices t and t+2). The 5-bit formats add the 5th bits of slice s as
// 8 bytes (bit b = byte b of the slice vector); q6_k adds one vector whose byte holds the top 2 bits
// of slices 0..3 (bits 2s, 2s+1). With L < 16 lanes a vector holds 4L bytes.
// Quantised layers come in tiles of 4 outputs: per group, the 4 headers, then the 4 outputs' data,
// so a tile is one memory stream.
//
// Activations are quantised per row (so the result stays row-invariant): per lane of S values
// d = max|x| / 127, q = round(x / d) in int8, stored slice-major like the weights, with per lane
// the scale d, the integer sum of q (for the offsets) and d * sum (for the minima).
//
// Each (output, row) result is computed in one fixed order on every path: per group, the exact
// integer lane sums, then  acc = fma(float(isum), ws * xs, acc)  and, with a minimum,
// acc = fma(wm, xs * xsum, acc)  in 16 float lanes; at the end the 16 lanes are summed by one
// fixed tree (reduce16). Integer sums are exact and the float steps are the same operations on the
// same lanes, so AVX-512 (VNNI or BW), AVX2 and scalar builds give the same bits.

#pragma once

#include "common.h"

namespace paradec {

enum Fmt : int32_t {
  F32 = 0, BF16 = 1, BF16_TILED = 2,
  Q8_0 = 10, Q4_0 = 11, Q4_1 = 12, Q4_K = 13, Q5_K = 14, Q6_K = 15, Q5_0 = 16, Q5_1 = 17
};

inline bool is_quant(int32_t fmt) { return fmt >= Q8_0 && fmt <= Q5_1; }

// formats whose weight is scale * stored + min (the others: scale * (stored - offset))
constexpr bool with_min(int32_t fmt) { return fmt == Q4_1 || fmt == Q5_1 || fmt == Q4_K || fmt == Q5_K; }
// formats with a 5th bit per weight
constexpr bool five_bits(int32_t fmt) { return fmt == Q5_0 || fmt == Q5_1 || fmt == Q5_K; }

struct QFormat {
  int lane;     // weights per lane (S)
  int hdr;      // header bytes per output and group
  int offset;   // stored - offset = the integer weight
  int bits;     // 4, 5, 6 or 8
  bool has_min;

  int slices() const { return lane / 4; }
  // data bytes per output of a group of L lanes
  int64_t data(int64_t L) const {
    switch (bits) {
      case 8: return L * 32;
      case 4: return L * 16;
      case 5: return L * 16 + 64;
      default: return 128 + 64;  // 6: always 16 lanes
    }
  }
  // a group of L lanes: the 4 outputs' headers, then their data in packs (pack_of)
  int64_t group_bytes(int64_t L) const {
    const int64_t P = pack_of(L);
    return 4 * hdr + (4 / P) * data(P * L);
  }
  // Outputs whose lanes share one vector in a group of L lanes: a short last group (K = 576 leaves 2
  // lanes of 32) would waste most of every instruction, so up to 4 outputs' lanes sit side by side
  // (output k of a pack in lanes k*L .. k*L+L-1) and one pass of integer sums serves all of them.
  static int64_t pack_of(int64_t L) { return L >= 16 ? 1 : (L > 8 ? 1 : (L > 4 ? 2 : 4)); }
};

inline QFormat qformat(int32_t fmt) {
  switch (fmt) {
    case Q8_0: return {32, 32, 0, 8, false};
    case Q4_0: return {32, 32, 8, 4, false};
    case Q4_1: return {32, 64, 0, 4, true};
    case Q4_K: return {32, 40, 0, 4, true};
    case Q5_K: return {32, 40, 0, 5, true};
    case Q5_0: return {32, 32, 16, 5, false};
    case Q5_1: return {32, 64, 0, 5, true};
    case Q6_K: return {16, 18, 32, 6, false};
    default: throw Error("not a quantised format: " + std::to_string(fmt));
  }
}

// Where the groups of one row of K weights start, and how many lanes each has.
struct Groups {
  int64_t lanes, full, last;  // lanes per row; full groups; lanes of the last partial group (0: none)
  Groups(int64_t K, int S) : lanes(K / S), full(K / S / 16), last((K / S) % 16) {}
  int64_t count() const { return full + (last ? 1 : 0); }
  int64_t L(int64_t g) const { return g < full ? 16 : last; }
};

// The weights' lane scales (and minima) of one output in one group: ws, wm [16] (0 beyond L).
inline void weight_scales(int32_t fmt, const uint8_t* h, int64_t L, float* ws, float* wm) {
  for (int j = 0; j < 16; ++j) ws[j] = wm[j] = 0.f;
  switch (fmt) {
    case Q8_0:
    case Q4_0:
    case Q5_0:
      for (int j = 0; j < L; ++j) ws[j] = f16(h + 2 * j);
      break;
    case Q4_1:
    case Q5_1:
      for (int j = 0; j < L; ++j) ws[j] = f16(h + 2 * j), wm[j] = f16(h + 32 + 2 * j);
      break;
    case Q4_K:
    case Q5_K:
      for (int j = 0; j < L; ++j) {
        const uint8_t* sb = h + 20 * (j / 8);  // d, dmin, sc[8], m[8]
        ws[j] = f16(sb) * float(sb[4 + j % 8]);           // exact: 11 x 6 significant bits
        wm[j] = -(f16(sb + 2) * float(sb[12 + j % 8]));
      }
      break;
    case Q6_K:
      for (int j = 0; j < 16; ++j) ws[j] = f16(h) * float(int8_t(h[2 + j]));
      break;
  }
}

// A row block's activations, quantised for lane width S.
struct QAct {
  int S;
  int64_t M, K, ng;
  std::vector<int8_t> q;      // [M, K], slice-major per group
  std::vector<float> xs, xd;  // [M, ng, 16]: lane scale, scale * sum (0 beyond the lanes)
  std::vector<int32_t> xi;    // [M, ng, 16]: integer sum of the lane's q
  int64_t tP = 1;             // outputs per pack in the last group (QFormat::pack_of)
  std::vector<int8_t> tq;     // [M, slices, 4 tP L]: the last group's q, repeated for each output of a pack
  std::vector<int32_t> txi;   // [M, 16]: its lane sums, repeated likewise

  QAct(const float* x, int64_t M_, int64_t K_, int S_) : S(S_), M(M_), K(K_) {
    const Groups G(K, S);
    ng = G.count();
    q.resize(M * K);
    xs.assign(M * ng * 16, 0.f);
    xd.assign(M * ng * 16, 0.f);
    xi.assign(M * ng * 16, 0);
    auto row = [&](int64_t r) {
      alignas(64) int8_t lane[32];
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t L = G.L(g), base = g * 16 * S;
        for (int64_t j = 0; j < L; ++j) {
          const float* xl = x + r * K + base + j * S;
          const float amax = abs_max(xl, S);
          const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
          const int32_t sum = quantise(xl, S, inv, lane);
          for (int s = 0; s < S / 4; ++s) std::memcpy(&q[r * K + base + s * 4 * L + 4 * j], lane + 4 * s, 4);
          const int64_t at = (r * ng + g) * 16 + j;
          xs[at] = d;
          xi[at] = sum;
          xd[at] = d * float(sum);
        }
      }
    };
    if (M == 1) row(0);
    else parallel(M, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) row(r);
    });
    const int64_t L = G.last;
    tP = L ? QFormat::pack_of(L) : 1;
    if (tP > 1) {
      const int slices = S / 4;
      const int64_t V = 4 * tP * L;  // a pack's slice: tP outputs' lanes
      tq.assign(M * slices * V, 0);
      txi.assign(M * 16, 0);
      for (int64_t r = 0; r < M; ++r)
        for (int64_t k = 0; k < tP; ++k) {
          for (int s = 0; s < slices; ++s)
            std::memcpy(&tq[(r * slices + s) * V + 4 * k * L], rowq(r, ng - 1) + s * 4 * L, 4 * L);
          std::memcpy(&txi[r * 16 + k * L], &xi[at(r, ng - 1)], L * sizeof(int32_t));
        }
    }
  }

  // the last group's q and lane sums as its packs read them
  const int8_t* tailq(int64_t r) const { return tq.data() + r * (S / 4) * 4 * tP * (K / S % 16); }
  const int32_t* tailxi(int64_t r) const { return txi.data() + r * 16; }

  // max |x| of n (16 or 32) values
  static float abs_max(const float* x, int n) {
#if PD_AVX2
    const __m256 sign = _mm256_set1_ps(-0.f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    for (int i = 8; i < n; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
#else
    float a = 0.f;
    for (int i = 0; i < n; ++i) a = std::max(a, std::fabs(x[i]));
    return a;
#endif
  }

  // q = round(x * inv) (to nearest even, as nearbyint) clamped to +-127; returns the sum of q
  static int32_t quantise(const float* x, int n, float inv, int8_t* q) {
#if PD_AVX2
    const __m256 iv = _mm256_set1_ps(inv), hi = _mm256_set1_ps(127.f), lo = _mm256_set1_ps(-127.f);
    __m256i sum = _mm256_setzero_si256();
    for (int i = 0; i < n; i += 8) {
      const __m256 v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), iv),
                                                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
      const __m256i k = _mm256_cvtps_epi32(v);  // exact: v is integral
      sum = _mm256_add_epi32(sum, k);
      const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packs_epi16(p16, p16));
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    return _mm_cvtsi128_si32(s4);
#else
    int32_t sum = 0;
    for (int i = 0; i < n; ++i) {
      const int v = std::min(127, std::max(-127, static_cast<int>(std::nearbyint(x[i] * inv))));
      q[i] = static_cast<int8_t>(v);
      sum += v;
    }
    return sum;
#endif
  }

  const int8_t* rowq(int64_t r, int64_t g) const { return q.data() + r * K + g * 16 * S; }
  int64_t at(int64_t r, int64_t g) const { return (r * ng + g) * 16; }
};

// The sum of 16 lanes by one fixed tree: t[i] = l[i] + l[i+8], then 8 lanes as hsum does.
inline float reduce16(const float* l) {
  float t[8];
  for (int i = 0; i < 8; ++i) t[i] = l[i] + l[i + 8];
  const float a0 = t[0] + t[4], a1 = t[1] + t[5], a2 = t[2] + t[6], a3 = t[3] + t[7];
  return (a0 + a2) + (a1 + a3);
}

// Quantised matrix products (qlinear.cpp): y[M, N] (row stride ldy) = x[M, K] @ W^T + bias.
void qgemm(int32_t fmt, const uint8_t* w, int64_t N, int64_t K, const QAct& xa, const float* bias, float* y, int64_t ldy);
// Rows idx of a quantised matrix as float32 [n, K] (the embedding lookup of a quantised table).
void qrows(int32_t fmt, const uint8_t* w, int64_t K, const int64_t* idx, int64_t n, float* out);
// Bytes of one tile of 4 outputs.
int64_t qtile_bytes(int32_t fmt, int64_t K);

}  // namespace paradec
