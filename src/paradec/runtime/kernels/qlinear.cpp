// Quantised matrix products: y = x @ W^T for the lane-group formats of quant.h, on three paths
// (AVX-512 with or without VNNI, AVX2, scalar) that give the same bits.

#include "quant.h"

namespace paradec {

int64_t qtile_bytes(int32_t fmt, int64_t K) {
  const QFormat F = qformat(fmt);
  const Groups G(K, F.lane);
  return G.full * F.group_bytes(16) + (G.last ? F.group_bytes(G.last) : 0);
}

namespace {

constexpr int NT = 4;     // outputs per tile (the storage tile)
constexpr int64_t RB = 64;  // rows per block: a block's activations stay in cache while a thread's tiles pass
constexpr int64_t PREFETCH = 2;  // tiles ahead

// One tile of 4 outputs: where group g's headers and its packs' data start (a full group has one
// output per pack; a short last group packs up to 4 outputs' lanes side by side, QFormat::pack_of).
struct Tile {
  const uint8_t* base;
  QFormat F;
  int64_t gb16;  // bytes of a full group
  const uint8_t* group(int64_t g) const { return base + g * gb16; }
  const uint8_t* hdr(int64_t g, int i) const { return group(g) + i * F.hdr; }
  const uint8_t* pack(int64_t g, int64_t p, int64_t L) const {
    const int64_t P = QFormat::pack_of(L);
    return group(g) + NT * F.hdr + p * F.data(P * L);
  }
};

// ---------------------------------------------------------------------------------------------
// scalar: the reference every vector path equals
// ---------------------------------------------------------------------------------------------
// The stored value of weight e of lane j in a group's data (L lanes), minus the format's offset.
inline int weight_int(int32_t fmt, const uint8_t* D, int64_t L, int64_t j, int e) {
  const int64_t V = 4 * L, s = e / 4, at = 4 * j + e % 4;
  switch (fmt) {
    case Q8_0: return int8_t(D[s * V + at]);
    case Q4_0: return (s < 4 ? D[s * V + at] & 15 : D[(s - 4) * V + at] >> 4) - 8;
    case Q4_1:
    case Q4_K: return s < 4 ? D[s * V + at] & 15 : D[(s - 4) * V + at] >> 4;
    case Q5_0:
    case Q5_1:
    case Q5_K: {
      const int nib = s < 4 ? D[s * V + at] & 15 : D[(s - 4) * V + at] >> 4;
      const int hi = (D[4 * V + 8 * s + at / 8] >> (at % 8)) & 1;
      return (nib | (hi << 4)) - (fmt == Q5_0 ? 16 : 0);
    }
    default: {  // Q6_K, V = 64
      const int nib = s < 2 ? D[s * 64 + at] & 15 : D[(s - 2) * 64 + at] >> 4;
      const int hi = (D[128 + at] >> (2 * s)) & 3;
      return (nib | (hi << 4)) - 32;
    }
  }
}

template <int RT>
void tile_scalar(int32_t fmt, const Tile& T, const Groups& G, const QAct& X, int64_t r0, float (*facc)[RT][16]) {
  const int S = T.F.lane;
  float ws[16], wm[16];
  for (int64_t g = 0; g < G.count(); ++g) {
    const int64_t L = G.L(g), V = 4 * L, P = QFormat::pack_of(L);
    for (int i = 0; i < NT; ++i) {
      weight_scales(fmt, T.hdr(g, i), L, ws, wm);
      const uint8_t* D = T.pack(g, i / P, L);
      const int64_t first = (i % P) * L;  // this output's first lane in its pack
      for (int r = 0; r < RT; ++r) {
        const int8_t* xq = X.rowq(r0 + r, g);
        const int64_t at = X.at(r0 + r, g);
        for (int64_t j = 0; j < 16; ++j) {
          int32_t isum = 0;
          if (j < L)
            for (int e = 0; e < S; ++e)
              isum += weight_int(fmt, D, P * L, first + j, e) * int32_t(xq[(e / 4) * V + 4 * j + e % 4]);
          float& a = facc[i][r][j];
          a = std::fma(float(isum), ws[j] * X.xs[at + j], a);
          if (T.F.has_min) a = std::fma(wm[j], X.xd[at + j], a);
        }
      }
    }
  }
}

#if PD_AVX512
// ---------------------------------------------------------------------------------------------
// AVX-512: 16 lanes in one register; vpdpbusd with VNNI, vpmaddubsw + vpmaddwd without
// ---------------------------------------------------------------------------------------------
inline void scales512(int32_t fmt, const uint8_t* h, __m512& ws, __m512& wm) {
  switch (fmt) {
    case Q8_0:
    case Q4_0:
    case Q5_0:
      ws = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)));
      wm = _mm512_setzero_ps();
      break;
    case Q4_1:
    case Q5_1:
      ws = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)));
      wm = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + 32)));
      break;
    case Q4_K:
    case Q5_K: {
      __m256 s[2], m[2];
      for (int b = 0; b < 2; ++b) {
        const uint8_t* sb = h + 20 * b;
        const __m256 d = _mm256_set1_ps(f16(sb)), dmin = _mm256_set1_ps(f16(sb + 2));
        const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 4))));
        const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 12))));
        s[b] = _mm256_mul_ps(d, sc);
        m[b] = _mm256_xor_ps(_mm256_mul_ps(dmin, mn), _mm256_set1_ps(-0.f));
      }
      ws = _mm512_insertf32x8(_mm512_castps256_ps512(s[0]), s[1], 1);
      wm = _mm512_insertf32x8(_mm512_castps256_ps512(m[0]), m[1], 1);
      break;
    }
    default:  // Q6_K
      ws = _mm512_mul_ps(_mm512_set1_ps(f16(h)),
                         _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 2)))));
      wm = _mm512_setzero_ps();
  }
}

// The integer lane sums of one group: acc[i][r] += (stored - offset) . x per lane.
template <int FMT, int NP, int RT>
inline void group512(const uint8_t* const* D, const int8_t* const* X, int64_t L, __m512i (&acc)[NP][RT]) {
  const __mmask16 lm = L >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << L) - 1);
  const int64_t V = 4 * L;
  const __m512i nib = _mm512_set1_epi8(0x0F);
  auto ld = [&](const void* p) { return _mm512_maskz_loadu_epi32(lm, p); };
#if PD_VNNI512
  auto dot = [](__m512i a, __m512i w, __m512i x) { return _mm512_dpbusd_epi32(a, w, x); };
#else
  const __m512i ones = _mm512_set1_epi16(1);
#endif
  if constexpr (FMT == Q8_0) {
    for (int s = 0; s < 8; ++s) {
      __m512i x[RT];
      for (int r = 0; r < RT; ++r) x[r] = ld(X[r] + s * V);
      for (int i = 0; i < NP; ++i) {
        const __m512i w = ld(D[i] + s * V);
#if PD_VNNI512
        const __m512i u = _mm512_xor_si512(w, _mm512_set1_epi8(char(0x80)));  // w + 128 as unsigned
        for (int r = 0; r < RT; ++r) acc[i][r] = dot(acc[i][r], u, x[r]);
#else
        const __m512i aw = _mm512_abs_epi8(w);
        const __mmask64 neg = _mm512_movepi8_mask(w);
        for (int r = 0; r < RT; ++r) {
          const __m512i sx = _mm512_mask_sub_epi8(x[r], neg, _mm512_setzero_si512(), x[r]);  // x * sign(w)
          acc[i][r] = _mm512_add_epi32(acc[i][r], _mm512_madd_epi16(_mm512_maddubs_epi16(aw, sx), ones));
        }
#endif
      }
    }
  } else if constexpr (FMT == Q6_K) {  // S = 16, L = 16: slices t (low nibbles) and t + 2 (high), top bits in h
    const __m512i m30 = _mm512_set1_epi8(0x30);
    __m512i x[4][RT];
    for (int s = 0; s < 4; ++s)
      for (int r = 0; r < RT; ++r) x[s][r] = _mm512_loadu_si512(X[r] + s * 64);
    for (int i = 0; i < NP; ++i) {
      const __m512i v0 = _mm512_loadu_si512(D[i]), v1 = _mm512_loadu_si512(D[i] + 64), hb = _mm512_loadu_si512(D[i] + 128);
      const __m512i q[4] = {
          _mm512_or_si512(_mm512_and_si512(v0, nib), _mm512_and_si512(_mm512_slli_epi16(hb, 4), m30)),
          _mm512_or_si512(_mm512_and_si512(v1, nib), _mm512_and_si512(_mm512_slli_epi16(hb, 2), m30)),
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v0, 4), nib), _mm512_and_si512(hb, m30)),
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v1, 4), nib), _mm512_and_si512(_mm512_srli_epi16(hb, 2), m30))};
      for (int r = 0; r < RT; ++r) {
#if PD_VNNI512
        for (int s = 0; s < 4; ++s) acc[i][r] = dot(acc[i][r], q[s], x[s][r]);
#else
        for (int s = 0; s < 4; s += 2) {  // 2 slices of 16-bit pair sums stay below 2^15
          const __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(q[s], x[s][r]), _mm512_maddubs_epi16(q[s + 1], x[s + 1][r]));
          acc[i][r] = _mm512_add_epi32(acc[i][r], _mm512_madd_epi16(p, ones));
        }
#endif
      }
    }
  } else {  // 4 or 5 bits, S = 32: vector t holds slice t (low nibbles) and t + 4 (high)
    constexpr bool five = five_bits(FMT);
#if !PD_VNNI512
    __m512i p16[NP][RT];
    for (int i = 0; i < NP; ++i)
      for (int r = 0; r < RT; ++r) p16[i][r] = _mm512_setzero_si512();
#endif
    for (int t = 0; t < 4; ++t) {
      __m512i xa[RT], xb[RT];
      for (int r = 0; r < RT; ++r) xa[r] = ld(X[r] + t * V), xb[r] = ld(X[r] + (t + 4) * V);
      for (int i = 0; i < NP; ++i) {
        const __m512i v = ld(D[i] + t * V);
        __m512i lo = _mm512_and_si512(v, nib), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
        if constexpr (five) {
          const uint8_t* hb = D[i] + 4 * V;
          __mmask64 ka, kb;
          std::memcpy(&ka, hb + 8 * t, 8);
          std::memcpy(&kb, hb + 8 * (t + 4), 8);
          lo = _mm512_mask_add_epi8(lo, ka, lo, _mm512_set1_epi8(16));
          hi = _mm512_mask_add_epi8(hi, kb, hi, _mm512_set1_epi8(16));
        }
        for (int r = 0; r < RT; ++r) {
#if PD_VNNI512
          acc[i][r] = dot(dot(acc[i][r], lo, xa[r]), hi, xb[r]);
#else
          p16[i][r] = _mm512_add_epi16(p16[i][r], _mm512_add_epi16(_mm512_maddubs_epi16(lo, xa[r]), _mm512_maddubs_epi16(hi, xb[r])));
#endif
        }
      }
#if !PD_VNNI512
      // 16-bit pair sums: 4-bit values allow 8 slices below 2^15, 5-bit ones 4
      if (t == 3 || (five && t == 1))
        for (int i = 0; i < NP; ++i)
          for (int r = 0; r < RT; ++r) {
            acc[i][r] = _mm512_add_epi32(acc[i][r], _mm512_madd_epi16(p16[i][r], ones));
            p16[i][r] = _mm512_setzero_si512();
          }
#endif
    }
  }
}

template <int FMT, int RT>
void tile512(const Tile& T, const Groups& G, const QAct& X, int64_t r0, float (*facc)[RT][16]) {
#if PD_VNNI512
  constexpr int off = FMT == Q8_0 ? 128 : (FMT == Q4_0 ? 8 : (FMT == Q6_K ? 32 : (FMT == Q5_0 ? 16 : 0)));
#else
  constexpr int off = FMT == Q4_0 ? 8 : (FMT == Q6_K ? 32 : (FMT == Q5_0 ? 16 : 0));
#endif
  constexpr bool has_min = with_min(FMT);
  auto init = [&](const int32_t* xi) {
    return off ? _mm512_mullo_epi32(_mm512_loadu_si512(xi), _mm512_set1_epi32(-off)) : _mm512_setzero_si512();
  };
  for (int64_t g = 0; g < G.count(); ++g) {
    const int64_t L = G.L(g), P = QFormat::pack_of(L);
    __m512 ws[NT], wm[NT];
    for (int i = 0; i < NT; ++i) scales512(FMT, T.hdr(g, i), ws[i], wm[i]);
    __m512i acc[NT][RT];  // per output: its lanes' integer sums, in lanes 0 .. L-1
    if (P == 1) {
      const uint8_t* D[NT];
      for (int i = 0; i < NT; ++i) D[i] = T.pack(g, i, L);
      const int8_t* Xq[RT];
      for (int r = 0; r < RT; ++r) {
        Xq[r] = X.rowq(r0 + r, g);
        const __m512i a = init(X.xi.data() + X.at(r0 + r, g));
        for (int i = 0; i < NT; ++i) acc[i][r] = a;
      }
      group512<FMT, NT, RT>(D, Xq, L, acc);
    } else {  // packs of P outputs: one pass of integer sums each, then each output's lanes moved to 0 .. L-1
      const int8_t* Xq[RT];
      for (int r = 0; r < RT; ++r) Xq[r] = X.tailq(r0 + r);
      const __mmask16 own = __mmask16((1u << L) - 1);
      for (int64_t p = 0; p < NT / P; ++p) {
        const uint8_t* D[1] = {T.pack(g, p, L)};
        __m512i pa[1][RT];
        for (int r = 0; r < RT; ++r) pa[0][r] = init(X.tailxi(r0 + r));
        group512<FMT, 1, RT>(D, Xq, P * L, pa);
        for (int r = 0; r < RT; ++r) {
          alignas(64) int32_t sums[32] = {};
          _mm512_store_si512(sums, pa[0][r]);
          for (int64_t k = 0; k < P; ++k) acc[p * P + k][r] = _mm512_maskz_loadu_epi32(own, sums + k * L);
        }
      }
    }
    for (int r = 0; r < RT; ++r) {
      const __m512 xs = _mm512_loadu_ps(X.xs.data() + X.at(r0 + r, g));
      const __m512 xd = _mm512_loadu_ps(X.xd.data() + X.at(r0 + r, g));
      for (int i = 0; i < NT; ++i) {
        __m512 a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][r]), _mm512_mul_ps(ws[i], xs), _mm512_loadu_ps(facc[i][r]));
        if (has_min) a = _mm512_fmadd_ps(wm[i], xd, a);
        _mm512_storeu_ps(facc[i][r], a);
      }
    }
  }
}
#endif  // PD_AVX512

#if PD_AVX2 && !PD_AVX512
// ---------------------------------------------------------------------------------------------
// AVX2: a group as two halves of 8 lanes (lanes 0-7, 8-15), each summed on its own
// ---------------------------------------------------------------------------------------------
inline void scales256(int32_t fmt, const uint8_t* h, int half, __m256& ws, __m256& wm) {
  switch (fmt) {
    case Q8_0:
    case Q4_0:
    case Q5_0:
      ws = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 16 * half)));
      wm = _mm256_setzero_ps();
      break;
    case Q4_1:
    case Q5_1:
      ws = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 16 * half)));
      wm = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 32 + 16 * half)));
      break;
    case Q4_K:
    case Q5_K: {
      const uint8_t* sb = h + 20 * half;
      const __m256 d = _mm256_set1_ps(f16(sb)), dmin = _mm256_set1_ps(f16(sb + 2));
      ws = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 4)))));
      wm = _mm256_xor_ps(_mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb + 12))))),
                         _mm256_set1_ps(-0.f));
      break;
    }
    default:  // Q6_K
      ws = _mm256_mul_ps(_mm256_set1_ps(f16(h)),
                         _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(h + 2 + 8 * half)))));
      wm = _mm256_setzero_ps();
  }
}

inline __m256i lane_mask(int64_t n) {  // the first n of 8 int32 lanes
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 32 bits -> 32 bytes of 0x10 where the bit is set (bit b -> byte b)
inline __m256i fifth_bits(const uint8_t* p) {
  uint32_t u;
  std::memcpy(&u, p, 4);
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
  const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(int(u)), shuf), bit);
  return _mm256_and_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(0x10));
}

template <int FMT, int NP, int RT>
inline void half256(const uint8_t* const* D, const int8_t* const* X, int64_t L, int half, __m256i (&acc)[NP][RT]) {
  const int64_t V = 4 * L, o = 32 * half;
  const int64_t n = std::min<int64_t>(8, L - 8 * half);
  const __m256i lm = lane_mask(n);
  const bool full = n == 8;
  auto ld = [&](const void* p) {
    return full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskload_epi32(reinterpret_cast<const int*>(p), lm);
  };
  const __m256i nib = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  if constexpr (FMT == Q8_0) {
    for (int s = 0; s < 8; ++s) {
      __m256i x[RT];
      for (int r = 0; r < RT; ++r) x[r] = ld(X[r] + s * V + o);
      for (int i = 0; i < NP; ++i) {
        const __m256i w = ld(D[i] + s * V + o), aw = _mm256_sign_epi8(w, w);
        for (int r = 0; r < RT; ++r)
          acc[i][r] = _mm256_add_epi32(acc[i][r], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x[r], w)), ones));
      }
    }
  } else if constexpr (FMT == Q6_K) {
    const __m256i m30 = _mm256_set1_epi8(0x30);
    for (int i = 0; i < NP; ++i) {
      const __m256i v0 = ld(D[i] + o), v1 = ld(D[i] + 64 + o), hb = ld(D[i] + 128 + o);
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(v0, nib), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30)),
          _mm256_or_si256(_mm256_and_si256(v1, nib), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v0, 4), nib), _mm256_and_si256(hb, m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v1, 4), nib), _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30))};
      for (int r = 0; r < RT; ++r)
        for (int s = 0; s < 4; s += 2) {
          const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(q[s], ld(X[r] + s * 64 + o)),
                                             _mm256_maddubs_epi16(q[s + 1], ld(X[r] + (s + 1) * 64 + o)));
          acc[i][r] = _mm256_add_epi32(acc[i][r], _mm256_madd_epi16(p, ones));
        }
    }
  } else {
    constexpr bool five = five_bits(FMT);
    __m256i p16[NP][RT];
    for (int i = 0; i < NP; ++i)
      for (int r = 0; r < RT; ++r) p16[i][r] = _mm256_setzero_si256();
    for (int t = 0; t < 4; ++t) {
      __m256i xa[RT], xb[RT];
      for (int r = 0; r < RT; ++r) xa[r] = ld(X[r] + t * V + o), xb[r] = ld(X[r] + (t + 4) * V + o);
      for (int i = 0; i < NP; ++i) {
        const __m256i v = ld(D[i] + t * V + o);
        __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
        if constexpr (five) {
          const uint8_t* hb = D[i] + 4 * V;
          lo = _mm256_or_si256(lo, fifth_bits(hb + 8 * t + 4 * half));
          hi = _mm256_or_si256(hi, fifth_bits(hb + 8 * (t + 4) + 4 * half));
        }
        for (int r = 0; r < RT; ++r)
          p16[i][r] = _mm256_add_epi16(p16[i][r], _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa[r]), _mm256_maddubs_epi16(hi, xb[r])));
      }
      if (t == 3 || (five && t == 1))
        for (int i = 0; i < NP; ++i)
          for (int r = 0; r < RT; ++r) {
            acc[i][r] = _mm256_add_epi32(acc[i][r], _mm256_madd_epi16(p16[i][r], ones));
            p16[i][r] = _mm256_setzero_si256();
          }
    }
  }
}

template <int FMT, int RT>
void tile256(const Tile& T, const Groups& G, const QAct& X, int64_t r0, float (*facc)[RT][16]) {
  constexpr int off = FMT == Q4_0 ? 8 : (FMT == Q6_K ? 32 : (FMT == Q5_0 ? 16 : 0));
  constexpr bool has_min = with_min(FMT);
  auto init = [&](const int32_t* xi) {
    return off ? _mm256_mullo_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xi)), _mm256_set1_epi32(-off))
               : _mm256_setzero_si256();
  };
  for (int64_t g = 0; g < G.count(); ++g) {
    const int64_t L = G.L(g), P = QFormat::pack_of(L);
    // per output and row: its lanes' integer sums, lanes 0 .. 15
    alignas(32) int32_t sums[NT][RT][16];
    if (P == 1) {
      const uint8_t* D[NT];
      for (int i = 0; i < NT; ++i) D[i] = T.pack(g, i, L);
      const int8_t* Xq[RT];
      for (int r = 0; r < RT; ++r) Xq[r] = X.rowq(r0 + r, g);
      for (int half = 0; half < 2 && 8 * half < L; ++half) {
        __m256i acc[NT][RT];
        for (int r = 0; r < RT; ++r) {
          const __m256i a = init(X.xi.data() + X.at(r0 + r, g) + 8 * half);
          for (int i = 0; i < NT; ++i) acc[i][r] = a;
        }
        half256<FMT, NT, RT>(D, Xq, L, half, acc);
        for (int i = 0; i < NT; ++i)
          for (int r = 0; r < RT; ++r) _mm256_store_si256(reinterpret_cast<__m256i*>(sums[i][r] + 8 * half), acc[i][r]);
      }
    } else {  // packs of P outputs (L <= 8): one pass each, then each output's lanes moved to 0 .. L-1
      const int8_t* Xq[RT];
      for (int r = 0; r < RT; ++r) Xq[r] = X.tailq(r0 + r);
      for (int64_t p = 0; p < NT / P; ++p) {
        const uint8_t* D[1] = {T.pack(g, p, L)};
        alignas(32) int32_t packed[RT][24] = {};
        for (int half = 0; half < 2 && 8 * half < P * L; ++half) {
          __m256i pa[1][RT];
          for (int r = 0; r < RT; ++r) pa[0][r] = init(X.tailxi(r0 + r) + 8 * half);
          half256<FMT, 1, RT>(D, Xq, P * L, half, pa);
          for (int r = 0; r < RT; ++r) _mm256_store_si256(reinterpret_cast<__m256i*>(packed[r] + 8 * half), pa[0][r]);
        }
        for (int64_t k = 0; k < P; ++k)
          for (int r = 0; r < RT; ++r) {
            const __m256i own = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed[r] + k * L)), lane_mask(L));
            _mm256_store_si256(reinterpret_cast<__m256i*>(sums[p * P + k][r]), own);
          }
      }
    }
    for (int half = 0; half < 2 && 8 * half < L; ++half) {
      __m256 ws[NT], wm[NT];
      for (int i = 0; i < NT; ++i) scales256(FMT, T.hdr(g, i), half, ws[i], wm[i]);
      for (int r = 0; r < RT; ++r) {
        const __m256 xs = _mm256_loadu_ps(X.xs.data() + X.at(r0 + r, g) + 8 * half);
        const __m256 xd = _mm256_loadu_ps(X.xd.data() + X.at(r0 + r, g) + 8 * half);
        for (int i = 0; i < NT; ++i) {
          float* f = facc[i][r] + 8 * half;
          const __m256i acc = _mm256_load_si256(reinterpret_cast<const __m256i*>(sums[i][r] + 8 * half));
          __m256 a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(ws[i], xs), _mm256_loadu_ps(f));
          if (has_min) a = _mm256_fmadd_ps(wm[i], xd, a);
          _mm256_storeu_ps(f, a);
        }
      }
    }
  }
}
#endif  // PD_AVX2 && !PD_AVX512

// One tile of 4 outputs for RT rows, on this build's path; y gets reduce16 of each lane vector.
template <int FMT, int RT>
void tile(const Tile& T, const Groups& G, const QAct& X, int64_t r0, int64_t t, int64_t N, const float* bias, float* y,
          int64_t ldy) {
  alignas(64) float facc[NT][RT][16];
  std::memset(facc, 0, sizeof(facc));
#if PD_AVX512
  tile512<FMT, RT>(T, G, X, r0, facc);
#elif PD_AVX2
  tile256<FMT, RT>(T, G, X, r0, facc);
#else
  tile_scalar<RT>(FMT, T, G, X, r0, facc);
#endif
  for (int i = 0; i < NT && NT * t + i < N; ++i)
    for (int r = 0; r < RT; ++r) {
#if PD_AVX512  // reduce16's tree: lanes i + i+8, then hsum's
      const __m512 l = _mm512_loadu_ps(facc[i][r]);
      const float v = hsum(_mm256_add_ps(_mm512_castps512_ps256(l), _mm512_extractf32x8_ps(l, 1)));
#elif PD_AVX2
      const float v = hsum(_mm256_add_ps(_mm256_loadu_ps(facc[i][r]), _mm256_loadu_ps(facc[i][r] + 8)));
#else
      const float v = reduce16(facc[i][r]);
#endif
      y[(r0 + r) * ldy + NT * t + i] = bias ? v + bias[NT * t + i] : v;
    }
}

template <int FMT>
void gemm_fmt(const uint8_t* w, int64_t N, int64_t K, const QAct& X, const float* bias, float* y, int64_t ldy) {
  const QFormat F = qformat(FMT);
  const Groups G(K, F.lane);
  const int64_t tb = qtile_bytes(FMT, K), tiles = (N + NT - 1) / NT, M = X.M;
  // chunks of whole 4-tile runs (16 outputs = one cache line of a row of y, never written by two
  // threads), and at most 16 chunks per thread: claiming one moves the pool's counter between cores
  const int64_t few = (tiles + 16 * pool().threads() - 1) / (16 * pool().threads());
  const int64_t grain = (std::max(grain_for(K * std::min(M, RB) * NT / 2), few) + 3) / 4 * 4;
  parallel(tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t r0 = 0; r0 < M; r0 += RB) {
      const int64_t r1 = std::min(M, r0 + RB);
      for (int64_t t = t0; t < t1; ++t) {
        const Tile T{w + t * tb, F, F.group_bytes(16)};
        if (t + PREFETCH < t1)  // one stream, but tiles are short: ask for the next ones early
          for (int64_t b = 0; b < tb; b += 64) __builtin_prefetch(w + (t + PREFETCH) * tb + b, 0, 0);
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) tile<FMT, 4>(T, G, X, r, t, N, bias, y, ldy);
        if (r1 - r == 3) tile<FMT, 3>(T, G, X, r, t, N, bias, y, ldy);
        else if (r1 - r == 2) tile<FMT, 2>(T, G, X, r, t, N, bias, y, ldy);
        else if (r1 - r == 1) tile<FMT, 1>(T, G, X, r, t, N, bias, y, ldy);
      }
    }
  });
}

}  // namespace

void qgemm(int32_t fmt, const uint8_t* w, int64_t N, int64_t K, const QAct& X, const float* bias, float* y, int64_t ldy) {
  check(X.S == qformat(fmt).lane && X.K == K, "activations quantised for another lane width");
  switch (fmt) {
    case Q8_0: return gemm_fmt<Q8_0>(w, N, K, X, bias, y, ldy);
    case Q4_0: return gemm_fmt<Q4_0>(w, N, K, X, bias, y, ldy);
    case Q4_1: return gemm_fmt<Q4_1>(w, N, K, X, bias, y, ldy);
    case Q4_K: return gemm_fmt<Q4_K>(w, N, K, X, bias, y, ldy);
    case Q5_K: return gemm_fmt<Q5_K>(w, N, K, X, bias, y, ldy);
    case Q5_0: return gemm_fmt<Q5_0>(w, N, K, X, bias, y, ldy);
    case Q5_1: return gemm_fmt<Q5_1>(w, N, K, X, bias, y, ldy);
    case Q6_K: return gemm_fmt<Q6_K>(w, N, K, X, bias, y, ldy);
    default: throw Error("not a quantised format: " + std::to_string(fmt));
  }
}

void qrows(int32_t fmt, const uint8_t* w, int64_t K, const int64_t* idx, int64_t n, float* out) {
  const QFormat F = qformat(fmt);
  const Groups G(K, F.lane);
  const int64_t tb = qtile_bytes(fmt, K);
  float ws[16], wm[16];
  for (int64_t r = 0; r < n; ++r) {
    const Tile T{w + (idx[r] / NT) * tb, F, F.group_bytes(16)};
    const int i = int(idx[r] % NT);
    for (int64_t g = 0; g < G.count(); ++g) {
      const int64_t L = G.L(g), P = QFormat::pack_of(L);
      weight_scales(fmt, T.hdr(g, i), L, ws, wm);
      const uint8_t* D = T.pack(g, i / P, L);
      for (int64_t j = 0; j < L; ++j)
        for (int e = 0; e < F.lane; ++e)  // as GGML dequantises: scale * q, then + min
          out[r * K + (g * 16 + j) * F.lane + e] = ws[j] * float(weight_int(fmt, D, P * L, (i % P) * L + j, e)) + wm[j];
    }
  }
}

}  // namespace paradec
