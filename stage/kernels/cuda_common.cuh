// Device helpers shared by Cascade's kernels (stage/*.cu): warp sums, float views of
// 16- and 32-bit storage, and the step from a runtime token count to a template one.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "stage/kernels/cuda_kernels.h"

namespace cascade::stage::cuda {

template <typename V>
__device__ inline V warp_sum(V v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline float load(const float* p, int64_t i) { return p[i]; }
__device__ inline float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ inline float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ inline void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ inline void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ inline void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// Runs launch(std::integral_constant<int, T>{}) for T == tokens in [1, kMaxTokens] and
// returns the launch error; cudaErrorInvalidValue for any other count.
template <int T = 1, class Launch>
cudaError_t for_tokens(int tokens, const Launch& launch) {
  if constexpr (T > kMaxTokens) {
    (void)tokens;
    (void)launch;
    return cudaErrorInvalidValue;
  } else {
    if (tokens != T) return for_tokens<T + 1>(tokens, launch);
    launch(std::integral_constant<int, T>{});
    return cudaGetLastError();
  }
}

}  // namespace cascade::stage::cuda
