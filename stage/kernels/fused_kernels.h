// One-kernel versions of the elementwise chains a decode step is made of on the GPU:
// RMSNorm is 8 ATen kernels and RoPE 10 per tensor, which at batch 1 cost more time
// than the weights' matmuls they sit between (docs/performance.md, the profile). Each
// returns an undefined tensor where it does not apply (no CUDA kernels in this build,
// a CPU tensor, another dtype), and the caller takes the ATen path. The results match
// that path's rounding (RoPE bit for bit; RMSNorm up to the order of its float sum).
// Plain functions; they queue on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace cascade::stage {

// at::linear for decode: x [tokens <= 8, in], w [out, in], b [out] or undefined, all
// float16 or bfloat16 -> [tokens, out]. One to four warps per weight row read it once
// for every token; cuBLAS's kernels for these shapes reach ~60% of HBM bandwidth (the
// profile).
at::Tensor fused_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// r + fused_linear(x, w, b) in one kernel; r [tokens, out] in x's dtype.
at::Tensor fused_linear_add(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r);
// A gated MLP's first half in one kernel: w [2 * I, in] holds the gate rows, then the up
// rows; -> act(x w_gate^T) * (x w_up^T) [tokens, I]. act: the Activation enum's value.
at::Tensor fused_gated_linear(const at::Tensor& x, const at::Tensor& w, int act);
// x [tokens, hidden], w [hidden] (x's dtype) -> [tokens, hidden]; see stage/ops.h rms_norm.
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);
// x [tokens, heads, head_dim], cos/sin [tokens, head_dim] (x's dtype); see stage/rope.h.
at::Tensor fused_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace cascade::stage
