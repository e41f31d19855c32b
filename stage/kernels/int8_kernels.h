// LLM.int8's activation split as one CUDA kernel (stage/kernels/int8_kernels.cu), in the
// form the decode projections read (stage/kernels/fused_kernels.h): ATen's split is a
// dozen kernels (column maxima, top-k, masks, row scales, quantize), four splits a layer,
// and its int8 x int8 product wants a padded cuBLASLt GEMM at decode's few rows.
//
// The form is a row a token ("ints" [T, K]) in x's own dtype, its int8 values (integers
// up to 127, exact in every float type; its outlier columns 0), and sx, which lists the
// token's outliers (columns and values), so that the decode kernels read only the int8
// rows whole. A projection of int8 rows q with scales s then gives y[t, n] = s[n]
// (sx[t][0] (row t . q[n]) + the listed outliers' products with q[n]) in one pass over q,
// which is LLM.int8's decomposition with the ATen split's int8 rows, scales and outliers
// (stage/kernels/quant.h says which).
// A plain function; it queues on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace cascade::stage {

constexpr int64_t kInt8SplitMaxTokens = 32;
// sx's row a token: the int8 row's scale, then its outliers listed: their count, then
// kInt8SplitList columns (exact floats) and their values, the first `count` of each used
// (0 after), as the decode kernels read them (stage/kernels/cuda_kernels.h).
constexpr int64_t kInt8SplitList = 32, kInt8SplitRow = 2 + 2 * kInt8SplitList;

// For x [T, K] on the GPU (float32, float16 or bfloat16) with T <= kInt8SplitMaxTokens
// and K whole 16-byte vectors (a multiple of 8 16-bit or 4 float32 values, up to 8,192):
// ints [T, K] in x's dtype and sx [T, kInt8SplitRow] float32 (column 0 the int8 rows'
// scales), split at `threshold` > 0 with at most `slots` (<= kInt8SplitList) outliers a
// token: its largest, ties at the last one's value taken by column (as the ATen split of
// stage/kernels/quant.h takes them). Returns false, filling nothing, where it does not apply
// (a CPU tensor, no CUDA kernels in this build, arguments out of those ranges).
bool int8_split_kernel(const at::Tensor& x, double threshold, int64_t slots, at::Tensor* ints, at::Tensor* sx);

}  // namespace cascade::stage
