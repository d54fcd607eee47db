// The structures the C interface passes (Python builds them once with ctypes; api.cpp, runtime/ops.py).

#pragma once

#include <memory>

#include "quant.h"

extern "C" {

#define PD_MAX_PARTS 4

// One part of a linear layer: N outputs of one format (weights as weights.py packs them).
struct pd_part {
  int32_t fmt;
  int32_t pad;
  int64_t N;
  const void* w;
};

// A linear layer y = x @ W^T + bias: its parts stacked along the outputs (q | k | v may mix formats).
struct pd_linear {
  int64_t N, K;
  int32_t nparts, pad;
  const float* bias;  // [N] or null
  pd_part parts[PD_MAX_PARTS];
};

struct pd_layer {
  pd_linear qkv, o, gate_up, down;
  const float* attn_norm;  // [hidden]
  const float* mlp_norm;   // [hidden]
};

struct pd_model {
  int32_t layers, hidden, heads, kv_heads, head_dim, inter;
  float eps;
  int32_t kv_bf16;  // KV cache in bf16 (else float32)
  const pd_layer* layer;
  const float* norm;  // [hidden]: the norm after the last layer
};

// The rows of one forward (runtime/model.py's Rows), for a stack of layers.
struct pd_rows {
  int64_t M;
  const int64_t* positions;      // [M]
  const int64_t* store;          // [M, 2]: (sequence, cache slot) each row's key and value go to
  const int64_t* seq;            // [M]: the sequence whose cache a row reads
  const int64_t* const* start;   // per layer: [M] first visible slot (sliding windows; else zeros)
  const int64_t* prefix;         // [M]: slots start .. prefix-1 are visible
  const int64_t* extra;          // [M, E]: more visible slots, ascending, -1 = none
  int64_t E;
  void* const* caches;           // per sequence: [layers, 2, kv_heads, cap, head_dim]
  const int64_t* caps;           // per sequence: its capacity
  int64_t sequences;
  const float* cos;              // [P, head_dim / 2]
  const float* sin;
  int64_t P;
};

}  // extern "C"

namespace paradec {

void linear(const pd_linear& lin, int64_t M, const float* x, float* y);
void linear_rows(const pd_linear& lin, const int64_t* idx, int64_t n, float* out);

// layer_ops.cpp
void rmsnorm(const float* x, const float* w, float eps, float* y, int64_t M, int64_t D);
void add_rmsnorm(float* h, const float* delta, const float* w, float eps, float* y, int64_t M, int64_t D);
void silu_mul(const float* gu, float* y, int64_t M, int64_t I);
void rope_store(const pd_model& m, int64_t layer, const pd_rows& rows, const float* qkv, float* q);

// attention.cpp: q [M, H, D] -> out [M, H, D]
void attention(const pd_model& m, int64_t layer, const pd_rows& rows, const float* q, float* out);

}  // namespace paradec
