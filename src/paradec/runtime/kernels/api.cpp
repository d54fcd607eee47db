// The C interface of the kernel library (runtime/kernels/build.py builds it, runtime/ops.py calls it
// through ctypes). Every entry returns 0, or -1 with the reason in pd_last_error().

#include "api.h"

namespace paradec {

void forward_layers(const pd_model& m, int64_t layers, const pd_rows& rows, float* h, float* x_out);

namespace {
thread_local std::string last_error;
thread_local std::unique_ptr<Pool> own_pool;  // this thread's pool, when it was given one
Pool& shared_pool() {
  static Pool p(1);
  return p;
}

template <class F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown error in paradec's kernels";
  }
  return -1;
}
}  // namespace

Pool& pool() { return own_pool ? *own_pool : shared_pool(); }

}  // namespace paradec

using namespace paradec;

extern "C" {

int pd_abi() { return 3; }  // bumped when a structure of api.h changes
const char* pd_isa() { return isa_name(); }
const char* pd_last_error() { return last_error.c_str(); }

// Threads of the process's shared pool (the caller takes part).
int pd_set_threads(int threads) {
  return guarded([&] { shared_pool().resize(threads); });
}

// Give the calling thread a pool of its own: `threads` threads pinned to `cpus` (ncpus of them,
// none: not pinned); threads <= 0 returns the thread to the shared pool.
int pd_use_own_pool(int threads, const int* cpus, int ncpus) {
  return guarded([&] {
    if (threads <= 0) own_pool.reset();
    else own_pool.reset(new Pool(threads, std::vector<int>(cpus, cpus + std::max(0, ncpus))));
  });
}

int pd_matmul(const pd_linear* lin, int64_t M, const float* x, float* y) {
  return guarded([&] { linear(*lin, M, x, y); });
}

int pd_embed(const pd_linear* lin, const int64_t* idx, int64_t n, float* out) {
  return guarded([&] { linear_rows(*lin, idx, n, out); });
}

int pd_layers(const pd_model* m, int64_t layers, const pd_rows* rows, float* h, float* x_out) {
  return guarded([&] { forward_layers(*m, layers, *rows, h, x_out); });
}

int64_t pd_tile_bytes(int32_t fmt, int64_t K) {
  int64_t bytes = -1;
  guarded([&] { bytes = qtile_bytes(fmt, K); });
  return bytes;
}

}  // extern "C"
