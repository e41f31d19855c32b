// Every LibTorch version difference lives here, and only here (1.13 CPU on Debian,
// 2.x with CUDA on the GPU machine). Code elsewhere calls these helpers and never
// tests TORCH_VERSION_* itself.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#define CASCADE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace cascade::compat {

// float16 matmul on CPU arrived in LibTorch 2.1; 1.13 has only bfloat16 and float32.
constexpr bool kCpuHalfMatmul = CASCADE_TORCH_AT_LEAST(2, 1);
constexpr const char* kTorchVersion = TORCH_VERSION;

// Attention. q [..., q_len, head_dim], k/v [..., kv_len, head_dim] with the same leading
// dims (one sequence: [heads, ...]; a decode batch: [seqs, kv_heads, ...]); `mask` bool,
// broadcastable to [..., q_len, kv_len], true = may attend, or undefined for "attend to
// everything". Softmax runs in float32 as HF's eager path does.
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            double scale) {
#if CASCADE_TORCH_AT_LEAST(2, 1)
  if (q.is_cuda()) {
    return at::scaled_dot_product_attention(q, k, v, mask.defined() ? c10::optional<at::Tensor>(mask) : c10::nullopt,
                                            0.0, false, scale);
  }
#endif
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * scale;  // [heads, q_len, kv_len]
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, v);  // [heads, q_len, head_dim]
}

}  // namespace cascade::compat
