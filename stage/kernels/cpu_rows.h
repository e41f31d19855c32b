// Row-wise ops of a step on the CPU, one call each: LlamaRMSNorm and rotate-half RoPE.
// Through ATen they are eight and ten operator calls, each allocating its result; at a
// prompt of 64 tokens on a small model those calls cost about as much as the norms' and
// rotations' neighbouring matrix products (docs/performance.md). Each reproduces the
// rounding of the ATen expression it replaces (stage/kernels/ops.cpp,
// stage/layers/rope.cpp): products and sums rounded to the storage type where ATen
// rounds them; only the float32 sum of squares may add in another order.
// Rows are split over at::parallel_for's threads; a row's result does not depend on the
// thread count. Each returns an undefined tensor where it does not apply (a CUDA
// tensor, another layout or dtype), and the caller takes the ATen path. Reentrant.
#pragma once

#include <ATen/ATen.h>

namespace cascade::stage {

// w * to_S(x * rsqrt(mean(x^2) + eps)) for x [rows, H] contiguous and w [H], both
// float32, bfloat16 or float16 (one dtype) -> [rows, H].
at::Tensor cpu_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);

// x * cos + rotate_half(x) * sin for x [tokens, heads, D] (last dim contiguous, D even)
// and cos, sin [tokens, D], with cos and sin first cast to x's dtype -> [tokens, heads,
// D] contiguous.
at::Tensor cpu_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace cascade::stage
