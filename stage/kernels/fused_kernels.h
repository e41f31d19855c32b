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

// at::linear for decode: x [tokens, in], w [out, in], b [out] or undefined -> [tokens,
// out] in x's dtype. w is in x's dtype (float16 or bfloat16), or int8 rows with `scale`
// [out] float32 (weight-only LLM.int8, stage/kernels/quant.h: y = scale * (x w^T) + b;
// x may then be float32 too). For a token or a few, one to four warps per weight row
// read it once (cuBLAS's kernels for these shapes reach ~60% of HBM bandwidth: the
// profile); from 5 tokens (16-bit weights, up to 8) or 2 (int8 rows, up to 64) a
// tensor-core kernel with the same epilogues does, on sm_80 and later for 16-bit x and
// in % 32 == 0 (16-bit weights) or % 64 (int8). Where neither takes the call
// (cuda::gemv_max_tokens): undefined, and the caller takes ATen's path.
// LLM.int8 with outliers: int8 rows, x the split kernel's ints [tokens, in]
// (stage/kernels/int8_kernels.h) and sx [tokens, kInt8SplitRow] float32 its rows (column
// 0 the scales, then the outliers' list); y = scale * (sx[:, 0] * (int8 part) + outlier
// part) + b.
at::Tensor fused_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& scale = {},
                        const at::Tensor& sx = {});
// r + fused_linear(x, w, b, scale, sx) in one kernel; r [tokens, out] in x's 16-bit dtype.
at::Tensor fused_linear_add(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r,
                            const at::Tensor& scale = {}, const at::Tensor& sx = {});
// A gated MLP's first half in one kernel: w [2 * I, in] holds the gate rows, then the up
// rows (scale [2 * I] for int8 rows); -> act(x w_gate^T) * (x w_up^T) [tokens, I], x
// 16-bit (or ints, with sx). act: the Activation enum's value.
at::Tensor fused_gated_linear(const at::Tensor& x, const at::Tensor& w, int act, const at::Tensor& scale = {},
                              const at::Tensor& sx = {});
// The gated activation alone, for projections no fused kernel takes (cuBLAS's, beyond
// the tensor-core kernel's tokens): gu [tokens, 2 * I] (gate, then up; 16-bit or float32)
// -> act(gate) * up [tokens, I], rounded as the ATen ops round, in one kernel instead of
// two strided ones.
at::Tensor fused_gated_act(const at::Tensor& gu, int act);
// x [tokens, hidden], w [hidden] (x's dtype) -> [tokens, hidden]; see stage/ops.h rms_norm.
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);
// x [tokens, heads, head_dim] (heads packed; tokens may be strided), cos/sin [tokens,
// head_dim] (x's dtype) -> contiguous; see stage/rope.h.
at::Tensor fused_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace cascade::stage
