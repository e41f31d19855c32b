// LLM.int8's activation split as one CUDA kernel (stage/kernels/int8_kernels.cu), in the
// form the decode projections read (stage/kernels/fused_kernels.h): ATen's split is a
// dozen kernels (column maxima, top-k, masks, row scales, quantize), four splits a layer,
// and its int8 x int8 product wants a padded cuBLASLt GEMM at decode's few rows.
//
// The form is two rows a token ("pairs" [2T, K]), in x's own dtype: row t holds token
// t's int8 values (integers up to 127, exact in every float type; its outlier columns
// 0), row T + t x's values in the outlier columns (0 elsewhere); sx lists each token's
// outliers too, so that the decode kernels read only the int8 rows whole. A projection
// of int8 rows q with scales s then gives y[t, n] = s[n] (sx[t][0] (row t . q[n]) +
// (row T + t . q[n])) in one pass over q, which is LLM.int8's decomposition with the
// ATen split's int8 rows, scales and outliers (stage/kernels/quant.h says which).
// A plain function; it queues on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace cascade::stage {

constexpr int64_t kInt8SplitMaxTokens = 32;
// sx's row a token: the int8 row's scale, then its outliers listed (count, up to 32
// columns, their values) for the tensor-core kernel (stage/kernels/cuda_kernels.h).
constexpr int64_t kInt8SplitRow = 66;

// For x [T, K] on the GPU (float32, float16 or bfloat16) with T <= kInt8SplitMaxTokens
// and K whole 16-byte vectors (a multiple of 8 16-bit or 4 float32 values, up to 8,192):
// pairs [2T, K] in x's dtype and sx [T, kInt8SplitRow] float32 (column 0 the int8 rows'
// scales), split at `threshold` with at most `slots` outliers a token (its largest;
// stage/kernels/quant.h). Returns false, filling nothing, where it does not apply (a CPU
// tensor, no CUDA kernels in this build).
bool int8_split_kernel(const at::Tensor& x, double threshold, int64_t slots, at::Tensor* pairs, at::Tensor* sx);

}  // namespace cascade::stage
