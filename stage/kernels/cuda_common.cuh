// Device helpers shared by Cascade's kernels (stage/*.cu): warp sums, float views of
// 16- and 32-bit storage, the step from a runtime token count to a template one, and
// the launch that lets a kernel start while the one before it finishes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <utility>

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

// A value rounded to the storage type, as an ATen op's result would be.
template <typename S>
__device__ inline float round_to(float v);
template <>
__device__ inline float round_to<float>(float v) {
  return v;
}
template <>
__device__ inline float round_to<__half>(float v) {
  return __half2float(__float2half_rn(v));
}
template <>
__device__ inline float round_to<__nv_bfloat16>(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

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

// RoPE (rotate-half) of one head's row: y[i] = x[i] cos[i] + rot(x)[i] sin[i] with
// rot(x) = [-x[half:], x[:half]], each product rounded to S before the sum, as HF's
// `q * cos + rotate_half(q) * sin` rounds in S. The block's threads stride over [0, D);
// y must not alias x.
template <typename S>
__device__ inline void rope_row(const S* __restrict__ x, const S* __restrict__ cos, const S* __restrict__ sin,
                                S* __restrict__ y, int D) {
  const int half = D / 2;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float rot = i < half ? -load(x, i + half) : load(x, i - half);
    const float a = round_to<S>(__fmul_rn(load(x, i), load(cos, i)));
    const float b = round_to<S>(__fmul_rn(rot, load(sin, i)));
    store(y, i, __fadd_rn(a, b));
  }
}

// Programmatic dependent launch (sm_90 and later). A decode step is ~300 short kernels
// in a row, and each paid its launch and ramp after the previous one drained; with
// launch_overlapped the next kernel's blocks are scheduled while the current one's last
// blocks run, and read what does not depend on it (weights) before they wait.
//
// The contract for a kernel started by launch_overlapped: it calls wait_for_prior_grid()
// before it reads anything an earlier kernel on the stream wrote, and before it writes
// anything (an earlier kernel may still read it). The wait returns once every earlier
// grid has completed with its writes visible. allow_next_grid() lets the next kernel be
// scheduled; call it after the wait, so at most one grid waits at a time.
__device__ inline void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ inline void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launches on the current device overlap: compute capability 9.0 or later and
// CASCADE_PDL not "0" (the switch for measuring what the overlap gains). Host code.
bool overlapped_launches();
// The fewest tokens for which the decode projections run on the tensor cores
// (small_gemm.cuh) rather than the GEMV; 0 for never (compute capability below 8.0, or
// CASCADE_TENSOR_CORE_GEMV=0: beyond 8 tokens, cuBLAS then). The default is from
// bench/gpu_gemv_bench; CASCADE_TENSOR_CORE_GEMV=N (1-65) sets it, and then 16-bit
// weights take the tensor cores up to 64 tokens too instead of cuBLAS: to measure. Host code.
int tensor_core_from(bool int8);
// CASCADE_MMA_SPLIT: 0 unset (the tensor-core kernel splits K by shape: small_gemm.cuh),
// else the splits asked for, 1-8 (1: never split), to measure. Host code.
int mma_split_setting();
// CASCADE_GEMV_ONE_WAVE: whether a one-token GEMV takes a grid of one wave with all its
// loads issued at once where one fits (gemv.cuh, launch_one_wave); default on, "0" keeps
// the shape's threads a row, to measure. Host code.
bool gemv_one_wave();

// kernel<<<grid, block, 0, stream>>>(args...), overlapped where overlapped_launches().
template <typename... P, typename... A>
cudaError_t launch_overlapped(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t stream, A&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = overlapped_launches() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

}  // namespace cascade::stage::cuda
