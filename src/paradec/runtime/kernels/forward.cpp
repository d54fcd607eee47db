// A stack of decoder layers in one call: embeddings in, final-normed hidden states out.

#include "api.h"

namespace paradec {

// h [M, hidden]: the residual stream (the rows' embeddings in, the last layer's residual out);
// x_out [M, hidden]: the hidden states after the last layer's successor norm (the final norm after
// the model's last layer) — what the LM head reads. Row r's key/value go to its (sequence, slot).
void forward_layers(const pd_model& m, int64_t layers, const pd_rows& rows, float* h, float* x_out) {
  check(layers >= 0 && layers <= m.layers, "layers outside the model");
  const int64_t M = rows.M, Dm = m.hidden, H = m.heads, Hkv = m.kv_heads, D = m.head_dim, I = m.inter;
  std::vector<float> x(M * Dm), qkv(M * (H + 2 * Hkv) * D), q(M * H * D), att(M * H * D), delta(M * Dm), gu(M * 2 * I),
      act(M * I);
  if (layers == 0) {
    std::memcpy(x_out, h, M * Dm * sizeof(float));
    return;
  }
  rmsnorm(h, m.layer[0].attn_norm, m.eps, x.data(), M, Dm);
  for (int64_t i = 0; i < layers; ++i) {
    const pd_layer& L = m.layer[i];
    linear(L.qkv, M, x.data(), qkv.data());
    rope_store(m, i, rows, qkv.data(), q.data());
    attention(m, i, rows, q.data(), att.data());
    linear(L.o, M, att.data(), delta.data());
    add_rmsnorm(h, delta.data(), L.mlp_norm, m.eps, x.data(), M, Dm);
    linear(L.gate_up, M, x.data(), gu.data());
    silu_mul(gu.data(), act.data(), M, I);
    linear(L.down, M, act.data(), delta.data());
    add_rmsnorm(h, delta.data(), i + 1 < layers ? m.layer[i + 1].attn_norm : m.norm, m.eps, i + 1 < layers ? x.data() : x_out, M, Dm);
  }
}

}  // namespace paradec
