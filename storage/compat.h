// Every LibTorch version difference lives here, and only here (1.13 CPU on Debian,
// 2.x with CUDA on the GPU machine). Code elsewhere calls these helpers and never
// tests TORCH_VERSION_* itself.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#include <algorithm>
#include <limits>

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
    // LibTorch's fused kernels take [batch, heads, len, head_dim] only: one sequence's
    // [heads, ...] would fall back to the float32 math path, a dozen launches.
    const bool one = q.dim() == 3;
    const at::Tensor m = !mask.defined()          ? mask
                         : one && mask.dim() == 2 ? mask.view({1, 1, mask.size(0), mask.size(1)})
                                                  : mask;
    const at::Tensor o =
        at::scaled_dot_product_attention(one ? q.unsqueeze(0) : q, one ? k.unsqueeze(0) : k, one ? v.unsqueeze(0) : v,
                                         m.defined() ? c10::optional<at::Tensor>(m) : c10::nullopt, 0.0, false, scale);
    return one ? o.squeeze(0) : o;
  }
#endif
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * scale;  // [heads, q_len, kv_len]
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, v);  // [heads, q_len, head_dim]
}

// Causal attention of one sequence from its first position: query i sees keys 0..i
// (q_len == kv_len). q/k/v [heads, len, head_dim], last dim contiguous. Through
// LibTorch's fused causal kernels (flash attention: no mask tensor, one launch) where
// this build and device have them; an undefined tensor otherwise, and the caller builds
// the mask for attention().
inline at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
#if CASCADE_TORCH_AT_LEAST(2, 1)
  if (q.is_cuda() && q.size(1) == k.size(1)) {
    return at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), c10::nullopt, 0.0, true,
                                            scale)
        .squeeze(0);
  }
#endif
  (void)q;
  (void)k;
  (void)v;
  (void)scale;
  return {};
}

// int8 x int8 -> int32 through cuBLASLt (at::_int_mm, LibTorch >= 2.1, CUDA only).
// a [M, K] int8, b [N, K] int8 (row-major, as an int8 nn.Linear weight) -> [M, N] int32,
// or an undefined tensor where this build or these shapes cannot: the caller then
// computes the sums itself. cuBLASLt wants more than 16 rows and K, N multiples of 8;
// decode's few rows are padded with zeros (the weight is read once either way).
inline at::Tensor int8_mm(const at::Tensor& a, const at::Tensor& b) {
#if CASCADE_TORCH_AT_LEAST(2, 1)
  if (a.is_cuda() && a.size(1) % 8 == 0 && b.size(0) % 8 == 0 && a.size(1) > 0) {
    const int64_t m = a.size(0), rows = std::max<int64_t>(24, (m + 7) / 8 * 8);
    const at::Tensor padded = rows == m ? a.contiguous() : at::constant_pad_nd(a, {0, 0, 0, rows - m});
    return at::_int_mm(padded, b.t()).narrow(0, 0, m);
  }
#endif
  (void)a;
  (void)b;
  return {};
}

}  // namespace cascade::compat
