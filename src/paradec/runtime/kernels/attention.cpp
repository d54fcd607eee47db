// Attention of each row over its visible keys.

#include "common.h"

namespace paradec {

// ---------------------------------------------------------------------------------------------
// attention over each row's visible keys
// ---------------------------------------------------------------------------------------------
// q: [M, H, D]; caches[seq]: [layers, 2, Hkv, cap, D]; seq: [M]; start, prefix: [M] (cache slots
// start..prefix-1 visible; start > 0 only under a sliding window); extra: [M, E] more visible slots
// in ascending order, -1 = none.
// Keys are visited prefix first, then extra, whatever M is: the arithmetic for a row is that of
// plain decoding of the same token.
// One key's score: 8-lane FMAs over D in order, then a fixed reduction tree
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), the tree four keys reduced together also give,
// so a key scores the same bits whether it is read alone or in a group of four.
template <typename T>
inline const float* as_float(const T* p, int64_t D, float* buf);
template <>
inline const float* as_float<float>(const float* p, int64_t, float*) { return p; }
template <>
inline const float* as_float<at::BFloat16>(const at::BFloat16* p, int64_t D, float* buf) {
  for (int64_t i = 0; i < D; ++i) buf[i] = static_cast<float>(p[i]);
  return buf;
}

#if PARADEC_AVX2
template <typename T>
inline __m256 load8(const T* p);
template <>
inline __m256 load8<float>(const float* p) { return _mm256_loadu_ps(p); }
template <>
inline __m256 load8<at::BFloat16>(const at::BFloat16* p) { return load_bf16(reinterpret_cast<const uint16_t*>(p)); }

inline __m256 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {  // lanes 0..3 of the result: the 4 sums
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm256_add_ps(t, _mm256_permute2f128_ps(t, t, 1));
}
#endif

template <typename T>
static void key_scores(const float* q, const T* K, const int64_t* slots, int64_t n, int64_t D, float scale, float* out) {
  int64_t j = 0;
#if PARADEC_AVX2
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
  float buf[1024];
  for (; j < n; ++j) {
    const float* k = as_float<T>(K + slots[j] * D, std::min<int64_t>(D, 1024), buf);
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s = std::fma(q[d], k[d], s);
    out[j] = s * scale;
  }
}

// out[d] = sum_j p[j] v_j[d], keys in order, 64 dimensions at a time in registers.
template <typename T>
static void weighted_values(const float* p, const T* V, const int64_t* slots, int64_t n, int64_t D, float* out) {
  int64_t d0 = 0;
#if PARADEC_AVX2
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
    for (int64_t j = 0; j < n; ++j) s = std::fma(p[j], static_cast<float>(V[slots[j] * D + d]), s);
    out[d] = s;
  }
}

template <typename T>
static void attend_one(const float* q, const T* K, const T* V, const int64_t* slots, int64_t n, int64_t D, float scale,
                       float* out, std::vector<float>& p) {
  p.resize(n);
  key_scores<T>(q, K, slots, n, D, scale, p.data());
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, p[j]);
  for (int64_t j = 0; j < n; ++j) p[j] -= mx;
  exp_inplace(p.data(), n);
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) sum += p[j];
  weighted_values<T>(p.data(), V, slots, n, D, out);
  const float inv = 1.f / sum;
  for (int64_t i = 0; i < D; ++i) out[i] *= inv;
}

at::Tensor attention(at::Tensor q, std::vector<at::Tensor> caches, at::Tensor seq, at::Tensor start,
                        at::Tensor prefix, at::Tensor extra, int64_t layer, double scale) {
  const int64_t M = q.size(0), H = q.size(1), D = q.size(2), E = extra.size(1);
  TORCH_CHECK(q.is_contiguous() && q.scalar_type() == at::kFloat, "q must be contiguous float [M, H, D]");
  auto out = at::empty_like(q);
  const int64_t* sp = seq.data_ptr<int64_t>();
  const int64_t* st = start.data_ptr<int64_t>();
  const int64_t* pp = prefix.data_ptr<int64_t>();
  const int64_t* ep = extra.data_ptr<int64_t>();
  struct Seq {
    const void* base;
    bool f32;
    int64_t Hkv, cap;
  };
  std::vector<Seq> seqs;
  for (const auto& c : caches) seqs.push_back({c.data_ptr(), c.scalar_type() == at::kFloat, c.size(2), c.size(3)});
  std::vector<std::vector<int64_t>> slots(M);  // each row's visible keys, shared by its heads
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t j = st[r]; j < pp[r]; ++j) slots[r].push_back(j);
    for (int64_t e = 0; e < E && ep[r * E + e] >= 0; ++e) slots[r].push_back(ep[r * E + e]);
  }
  const float* qbase = q.data_ptr<float>();
  float* obase = out.data_ptr<float>();
  py::gil_scoped_release no_gil;
  parallel(M * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> p;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / H, h = t % H;
      const Seq& c = seqs[sp[r]];
      const int64_t g = h / (H / c.Hkv);
      const int64_t koff = ((layer * 2 + 0) * c.Hkv + g) * c.cap * D, voff = ((layer * 2 + 1) * c.Hkv + g) * c.cap * D;
      const float* qp = qbase + (r * H + h) * D;
      float* op = obase + (r * H + h) * D;
      const std::vector<int64_t>& sl = slots[r];
      if (c.f32) {
        const float* kv = static_cast<const float*>(c.base);
        attend_one<float>(qp, kv + koff, kv + voff, sl.data(), sl.size(), D, float(scale), op, p);
      } else {
        const at::BFloat16* kv = static_cast<const at::BFloat16*>(c.base);
        attend_one<at::BFloat16>(qp, kv + koff, kv + voff, sl.data(), sl.size(), D, float(scale), op, p);
      }
    }
  });
  return out;
}

}  // namespace paradec
