// The decode-sized LLM.int8 matmul with outliers as a CUDA kernel
// (stage/int8_kernels.cu): one warp per weight row reads it once, 16 bytes per lane, and
// serves every token of the batch. ATen has no such kernel: cuBLASLt's int8 GEMM wants
// more than 16 rows, so decode's one to eight rows cost a padded GEMM plus a dozen
// elementwise kernels per projection.
//
// y[t, n] = scale[n] * (sx[t] * sum_k xq[t, k] q[n, k] + sum_j xo[t, j] q[n, cols[j]])
// with the int8 part summed exactly in int32 (dp4a) and the few outlier columns in float.
// (Weight-only int8, threshold 0, is the decode GEMV of stage/kernels/fused_kernels.h.)
//
// int8_gemv_mixed returns [tokens, out] float32, or an undefined tensor where it does not apply (no CUDA
// kernels in this build, more than kMaxTokens tokens, in % 16 != 0): the caller then
// takes the ATen path. A plain function; it queues on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace cascade::stage {

constexpr int64_t kInt8KernelMaxTokens = 8;

// LLM.int8's activation split (stage/kernels/quant.h, int8_split) in one kernel, for x
// [T, K] on the GPU with T <= kInt8KernelMaxTokens and K >= slots: the same xq [T, K]
// int8, sx [T, 1] and, for the outlier columns (the `slots` largest column maxima over the
// threshold, largest first), cols [slots] int64 and xo [T, slots] float32; slots past the
// outliers hold column 0 with xo 0, which adds nothing. Returns false, filling nothing,
// where it does not apply. (ATen's path is a dozen kernels per split, four splits a layer.)
bool int8_split_kernel(const at::Tensor& x, double threshold, int64_t slots, at::Tensor* xq, at::Tensor* sx,
                       at::Tensor* cols, at::Tensor* xo);

// xq [T, K] int8, sx [T, 1] float32, xo [T, k] float32, cols [k] int64, q [N, K] int8, scale [N] float32.
at::Tensor int8_gemv_mixed(const at::Tensor& xq, const at::Tensor& sx, const at::Tensor& xo, const at::Tensor& cols,
                           const at::Tensor& q, const at::Tensor& scale);

}  // namespace cascade::stage
