// Attention of each row over its visible keys, reading each cached key and value once per block.
//
// A row sees the cache slots start .. prefix-1 of its sequence and then its `extra` slots (its
// tree ancestors among the pending rows); all ascending. The slots are cut into fixed chunks of CH
// (by slot number, the same cut for every row and every block): per (row, head, chunk) a partial
// softmax (max m, sum l, weighted values acc) over the row's visible keys of that chunk, in slot
// order; then per (row, head) the chunks are combined in order. Nothing in a row's arithmetic
// depends on the other rows, so the bits are those of plain decoding of the same token; and a work
// item is (rows of one sequence, kv head, chunk): the chunk's keys and values are read from memory
// once and serve every row and every query head of the group from the cache (GQA: the query heads
// of one kv head share its keys).
//
// One key's score: 8-lane FMAs over D in order (16 lanes on AVX-512, whose two halves are then
// added), then a fixed reduction tree ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), the tree four
// keys reduced together also give, so a key scores the same bits whether it is read alone or in a
// group of four. (The AVX-512 and AVX2 paths sum in other orders: each is row-invariant on its own.)

#include "api.h"

namespace paradec {

namespace {

constexpr int64_t CH = 128;  // keys per chunk
constexpr int64_t RB = 64;   // rows per pass (bounds the partials' memory)

template <typename T>
inline float to_float(T v);
template <>
inline float to_float<float>(float v) { return v; }
template <>
inline float to_float<uint16_t>(uint16_t v) { return bf16_to_float(v); }

#if PD_AVX2
template <typename T>
inline __m256 load8(const T* p);
template <>
inline __m256 load8<float>(const float* p) { return _mm256_loadu_ps(p); }
template <>
inline __m256 load8<uint16_t>(const uint16_t* p) { return load_bf16(p); }

inline __m256 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {  // lanes 0..3 of the result: the 4 sums
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm256_add_ps(t, _mm256_permute2f128_ps(t, t, 1));
}
#endif

#if PD_AVX512
template <typename T>
inline __m512 load16(const T* p);
template <>
inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <>
inline __m512 load16<uint16_t>(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
inline __m256 halves(__m512 a) { return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)); }
#endif

// out[j] = scale * q . K[slots[j]]
template <typename T>
void key_scores(const float* q, const T* K, const int64_t* slots, int64_t n, int64_t D, float scale, float* out) {
  int64_t j = 0;
#if PD_AVX512  // 16 lanes over D, the two halves added, then the 4-key tree of the AVX2 path (8 keys at once)
  if (D % 16 == 0) {
    const __m256 z = _mm256_setzero_ps(), sc = _mm256_set1_ps(scale);
    for (; j + 8 <= n; j += 8) {  // two 4-key trees, their last step (lanes i + i+4) for 8 keys at once
      __m512 a[8];
      for (int i = 0; i < 8; ++i) a[i] = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) {
        const __m512 qv = _mm512_loadu_ps(q + d);
        for (int i = 0; i < 8; ++i) a[i] = _mm512_fmadd_ps(qv, load16<T>(K + slots[j + i] * D + d), a[i]);
      }
      const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(halves(a[0]), halves(a[1])), _mm256_hadd_ps(halves(a[2]), halves(a[3])));
      const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(halves(a[4]), halves(a[5])), _mm256_hadd_ps(halves(a[6]), halves(a[7])));
      const __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
      _mm256_storeu_ps(out + j, _mm256_mul_ps(s, sc));
    }
    for (; j < n; ++j) {  // the last keys one by one: the same tree, zeros in the other lanes
      const T* k = K + slots[j] * D;
      __m512 a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load16<T>(k + d), a);
      out[j] = _mm256_cvtss_f32(reduce4(halves(a), z, z, z)) * scale;
    }
    return;
  }
#endif
#if PD_AVX2
  if (D % 8 == 0) {
    for (; j + 4 <= n; j += 4) {
      const T* k[4] = {K + slots[j] * D, K + slots[j + 1] * D, K + slots[j + 2] * D, K + slots[j + 3] * D};
      __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        for (int i = 0; i < 4; ++i) a[i] = _mm256_fmadd_ps(qv, load8<T>(k[i] + d), a[i]);
      }
      alignas(32) float sums[8];
      _mm256_store_ps(sums, reduce4(a[0], a[1], a[2], a[3]));
      for (int i = 0; i < 4; ++i) out[j + i] = sums[i] * scale;
    }
    for (; j < n; ++j) {
      const T* k = K + slots[j] * D;
      __m256 a = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8<T>(k + d), a);
      const __m256 z = _mm256_setzero_ps();
      out[j] = _mm256_cvtss_f32(reduce4(a, z, z, z)) * scale;
    }
    return;
  }
#endif
  for (; j < n; ++j) {
    const T* k = K + slots[j] * D;
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s = std::fma(q[d], to_float<T>(k[d]), s);
    out[j] = s * scale;
  }
}

#if PD_AVX512
// out[d0 .. d0 + 16W) = sum_j p[j] v_j[...], keys in order, in W registers
template <int W, typename T>
inline void values512(const float* p, const T* V, const int64_t* slots, int64_t n, int64_t D, int64_t d0, float* out) {
  __m512 acc[W];
  for (int i = 0; i < W; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m512 pj = _mm512_set1_ps(p[j]);
    const T* v = V + slots[j] * D + d0;
    for (int i = 0; i < W; ++i) acc[i] = _mm512_fmadd_ps(pj, load16<T>(v + 16 * i), acc[i]);
  }
  for (int i = 0; i < W; ++i) _mm512_storeu_ps(out + d0 + 16 * i, acc[i]);
}
#endif

// out[d] = sum_j p[j] v_j[d], keys in order, 64 (AVX-512: 128) dimensions at a time in registers.
template <typename T>
void weighted_values(const float* p, const T* V, const int64_t* slots, int64_t n, int64_t D, float* out) {
  int64_t d0 = 0;
#if PD_AVX512
  for (; d0 + 128 <= D; d0 += 128) values512<8, T>(p, V, slots, n, D, d0, out);
  for (; d0 + 64 <= D; d0 += 64) values512<4, T>(p, V, slots, n, D, d0, out);
#endif
#if PD_AVX2
  for (; d0 + 64 <= D; d0 += 64) {
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const T* v = V + slots[j] * D + d0;
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(pj, load8<T>(v + 8 * i), acc[i]);
    }
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + d0 + 8 * i, acc[i]);
  }
#endif
  for (int64_t d = d0; d < D; ++d) {
    float s = 0.f;
    for (int64_t j = 0; j < n; ++j) s = std::fma(p[j], to_float<T>(V[slots[j] * D + d]), s);
    out[d] = s;
  }
}

// The largest of x[0 .. n), n > 0 (exact in any order).
inline float max_of(const float* x, int64_t n) {
  int64_t j = 0;
  float mx = -INFINITY;
#if PD_AVX512
  if (n >= 16) {
    __m512 m = _mm512_loadu_ps(x);
    for (j = 16; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
    mx = _mm512_reduce_max_ps(m);
  }
#elif PD_AVX2
  if (n >= 8) {
    __m256 m = _mm256_loadu_ps(x);
    for (j = 8; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
    alignas(32) float l[8];
    _mm256_store_ps(l, m);
    for (float v : l) mx = std::max(mx, v);
  }
#endif
  for (; j < n; ++j) mx = std::max(mx, x[j]);
  return mx;
}

// x[0] + ... + x[n-1] in one fixed order for a given n on every path: 8 running lane sums (lane
// j % 8 gets x[j]), added by the tree ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)).
inline float sum_of(const float* x, int64_t n) {
  float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
#if PD_AVX2
  __m256 a = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(x + j));
  _mm256_storeu_ps(l, a);
#endif
  for (; j < n; ++j) l[j % 8] += x[j];
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// The partial softmax of one query over keys `slots`: part = {m, l, acc[D]}.
template <typename T>
void partial(const float* q, const T* K, const T* V, const int64_t* slots, int64_t n, int64_t D, float scale, float* p,
             float* part) {
  key_scores<T>(q, K, slots, n, D, scale, p);
  const float mx = max_of(p, n);
  for (int64_t j = 0; j < n; ++j) p[j] -= mx;
  exp_inplace(p, n);
  part[0] = mx;
  part[1] = sum_of(p, n);
  weighted_values<T>(p, V, slots, n, D, part + 2);
}

// Row r's visible slots in [lo, hi), ascending, into buf; returns how many.
inline int64_t visible(const pd_rows& rows, const int64_t* start, int64_t r, int64_t lo, int64_t hi, int64_t* buf) {
  int64_t n = 0;
  for (int64_t j = std::max(lo, start[r]); j < std::min(hi, rows.prefix[r]); ++j) buf[n++] = j;
  for (int64_t e = 0; e < rows.E; ++e) {
    const int64_t j = rows.extra[r * rows.E + e];
    if (j < 0) break;
    if (j >= lo && j < hi) buf[n++] = j;
  }
  return n;
}

template <typename T>
void attend(const pd_model& m, int64_t layer, const pd_rows& rows, const float* q, float* out) {
  const int64_t H = m.heads, Hkv = m.kv_heads, D = m.head_dim, rep = H / Hkv;
  const float scale = 1.f / std::sqrt(float(D));
  const int64_t* start = rows.start[layer];
  std::vector<std::vector<int64_t>> by_seq(rows.sequences);  // each sequence's rows
  for (int64_t r = 0; r < rows.M; ++r) {
    check(rows.seq[r] >= 0 && rows.seq[r] < rows.sequences, "row of an unknown sequence");
    by_seq[rows.seq[r]].push_back(r);
  }
  for (int64_t s = 0; s < rows.sequences; ++s) {
    const std::vector<int64_t>& all = by_seq[s];
    if (all.empty()) continue;
    const int64_t cap = rows.caps[s];
    const T* cache = static_cast<const T*>(rows.caches[s]);
    for (size_t b0 = 0; b0 < all.size(); b0 += RB) {
      const int64_t* rs = all.data() + b0;
      const int64_t nr = std::min<int64_t>(RB, all.size() - b0);
      int64_t lo = INT64_MAX, hi = 0;  // the slots any row of the pass sees
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t r = rs[i];
        check(start[r] >= 0 && rows.prefix[r] <= cap, "visible slots outside the cache");
        lo = std::min(lo, start[r]);
        hi = std::max(hi, rows.prefix[r]);
        for (int64_t e = 0; e < rows.E && rows.extra[r * rows.E + e] >= 0; ++e) {
          check(rows.extra[r * rows.E + e] < cap, "visible slots outside the cache");
          hi = std::max(hi, rows.extra[r * rows.E + e] + 1);
        }
      }
      const int64_t c0 = lo / CH, nch = (hi + CH - 1) / CH - c0;
      std::vector<float> parts(nr * H * nch * (D + 2));
      auto part_of = [&](int64_t i, int64_t h, int64_t c) { return parts.data() + ((i * H + h) * nch + c) * (D + 2); };
      parallel(Hkv * nch, 1, [&](int64_t t0, int64_t t1) {
        std::vector<int64_t> slots(CH);
        std::vector<float> p(CH);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t g = t / nch, c = t % nch, clo = (c0 + c) * CH;
          const T* K = cache + ((layer * 2 + 0) * Hkv + g) * cap * D;
          const T* V = cache + ((layer * 2 + 1) * Hkv + g) * cap * D;
          for (int64_t i = 0; i < nr; ++i) {
            const int64_t r = rs[i], n = visible(rows, start, r, clo, clo + CH, slots.data());
            for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
              float* part = part_of(i, h, c);
              if (n == 0) {
                part[0] = -INFINITY, part[1] = 0.f;
                continue;
              }
              partial<T>(q + (r * H + h) * D, K, V, slots.data(), n, D, scale, p.data(), part);
            }
          }
        }
      });
      // combine each (row, head)'s chunks in order
      parallel(nr * H, 4, [&](int64_t t0, int64_t t1) {
        std::vector<float> e(nch);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t i = t / H, h = t % H;
          float mx = -INFINITY;
          for (int64_t c = 0; c < nch; ++c) mx = std::max(mx, part_of(i, h, c)[0]);
          for (int64_t c = 0; c < nch; ++c) e[c] = part_of(i, h, c)[1] > 0.f ? part_of(i, h, c)[0] - mx : 0.f;
          exp_inplace(e.data(), nch);
          float l = 0.f;
          float* o = out + (rs[i] * H + h) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
          for (int64_t c = 0; c < nch; ++c) {
            const float* part = part_of(i, h, c);
            if (part[1] == 0.f) continue;  // no visible key in this chunk
            l += e[c] * part[1];
            for (int64_t d = 0; d < D; ++d) o[d] += e[c] * part[2 + d];
          }
          const float inv = 1.f / l;
          for (int64_t d = 0; d < D; ++d) o[d] *= inv;
        }
      });
    }
  }
}

}  // namespace

void attention(const pd_model& m, int64_t layer, const pd_rows& rows, const float* q, float* out) {
  check(m.heads % m.kv_heads == 0, "heads must be a multiple of kv heads");
  if (m.kv_bf16) attend<uint16_t>(m, layer, rows, q, out);
  else attend<float>(m, layer, rows, q, out);
}

}  // namespace paradec
