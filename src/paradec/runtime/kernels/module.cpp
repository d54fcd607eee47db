// The Python bindings, and the process's one thread pool.

#include "common.h"

namespace paradec {

Pool& pool() {
  static Pool p;
  return p;
}

at::Tensor linear(at::Tensor x, const std::string& fmt, at::Tensor w, int64_t N, c10::optional<at::Tensor> bias);
at::Tensor dequant_rows(at::Tensor w, const std::string& fmt, int64_t K, at::Tensor idx);
at::Tensor rmsnorm(at::Tensor x, at::Tensor w, double eps);
at::Tensor add_rmsnorm(at::Tensor h, at::Tensor delta, at::Tensor w, double eps);
at::Tensor silu_mul(at::Tensor gu);
at::Tensor rope_store(at::Tensor qkv, int64_t H, int64_t Hkv, at::Tensor cos, at::Tensor sin, at::Tensor pos,
                      std::vector<at::Tensor> caches, at::Tensor rows, int64_t layer);
at::Tensor attention(at::Tensor q, std::vector<at::Tensor> caches, at::Tensor seq, at::Tensor start, at::Tensor prefix,
                     at::Tensor extra, int64_t layer, double scale);

bool has_avx2() { return PARADEC_AVX2; }

}  // namespace paradec

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  using namespace paradec;
  mod.def("linear", &linear, "y = x @ W^T (+ bias) for f32/bf16/q8/q4 weights");
  mod.def("dequant_rows", &dequant_rows, "rows of a q8/q4 tiled matrix as float32");
  mod.def("rmsnorm", &rmsnorm);
  mod.def("add_rmsnorm", &add_rmsnorm);
  mod.def("silu_mul", &silu_mul);
  mod.def("rope_store", &rope_store);
  mod.def("attention", &attention);
  mod.def("has_avx2", &has_avx2);
}
