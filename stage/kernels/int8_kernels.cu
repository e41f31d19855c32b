// The CUDA side of stage/int8_kernels.h: raw pointers only (no LibTorch headers, so
// nvcc compiles it against the toolkit alone).
#include "stage/kernels/cuda_common.cuh"

namespace cascade::stage::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

__device__ inline int dot4(int a, int b, int acc) { return __dp4a(a, b, acc); }

// One warp per weight row n; each lane reads 16 int8 weights (one int4) per step.
template <int T>
__global__ void mixed_kernel(const int8_t* __restrict__ xq, const float* __restrict__ sx, const float* __restrict__ xo,
                             const int64_t* __restrict__ cols, int k_out, const int8_t* __restrict__ q,
                             const float* __restrict__ scale, float* __restrict__ y, int K, int N) {
  const int lane = threadIdx.x % kWarp;
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  if (n >= N) return;
  const int4* row = reinterpret_cast<const int4*>(q + static_cast<int64_t>(n) * K);
  const int vecs = K / 16;
  int acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0;
#pragma unroll 4
  for (int v = lane; v < vecs; v += kWarp) {
    const int4 w = __ldg(row + v);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const int4 a = __ldg(reinterpret_cast<const int4*>(xq + static_cast<int64_t>(t) * K) + v);
      acc[t] = dot4(a.x, w.x, acc[t]);
      acc[t] = dot4(a.y, w.y, acc[t]);
      acc[t] = dot4(a.z, w.z, acc[t]);
      acc[t] = dot4(a.w, w.w, acc[t]);
    }
  }
  // The outlier columns: lane j takes column j (there are at most 32).
  const int8_t* qn = q + static_cast<int64_t>(n) * K;
  const int8_t wj = lane < k_out ? qn[cols[lane]] : 0;
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int s = warp_sum(acc[t]);
    const float o = warp_sum(lane < k_out ? xo[t * k_out + lane] * static_cast<float>(wj) : 0.f);
    if (lane == 0) y[static_cast<int64_t>(t) * N + n] = scale[n] * (sx[t] * static_cast<float>(s) + o);
  }
}

template <int T>
__global__ void weight_only_kernel(const float* __restrict__ x, const int8_t* __restrict__ q,
                                   const float* __restrict__ scale, float* __restrict__ y, int K, int N) {
  const int lane = threadIdx.x % kWarp;
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  if (n >= N) return;
  const int4* row = reinterpret_cast<const int4*>(q + static_cast<int64_t>(n) * K);
  const int vecs = K / 16;
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
#pragma unroll 2
  for (int v = lane; v < vecs; v += kWarp) {
    const int4 w4 = __ldg(row + v);
    const int8_t* w = reinterpret_cast<const int8_t*>(&w4);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float4* xv = reinterpret_cast<const float4*>(x + static_cast<int64_t>(t) * K) + v * 4;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 a = __ldg(xv + i);
        acc[t] += a.x * w[4 * i] + a.y * w[4 * i + 1] + a.z * w[4 * i + 2] + a.w * w[4 * i + 3];
      }
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[static_cast<int64_t>(t) * N + n] = scale[n] * s;
  }
}

template <int T>
void launch_mixed(const int8_t* xq, const float* sx, const float* xo, const int64_t* cols, int k_out, const int8_t* q,
                  const float* scale, float* y, int K, int N, cudaStream_t stream) {
  const dim3 grid((N + kWarpsPerBlock - 1) / kWarpsPerBlock), block(kWarp * kWarpsPerBlock);
  mixed_kernel<T><<<grid, block, 0, stream>>>(xq, sx, xo, cols, k_out, q, scale, y, K, N);
}

template <int T>
void launch_weight_only(const float* x, const int8_t* q, const float* scale, float* y, int K, int N,
                        cudaStream_t stream) {
  const dim3 grid((N + kWarpsPerBlock - 1) / kWarpsPerBlock), block(kWarp * kWarpsPerBlock);
  weight_only_kernel<T><<<grid, block, 0, stream>>>(x, q, scale, y, K, N);
}

}  // namespace

cudaError_t int8_mixed(int T, const int8_t* xq, const float* sx, const float* xo, const int64_t* cols, int k_out,
                       const int8_t* q, const float* scale, float* y, int K, int N, cudaStream_t stream) {
  return for_tokens(
      T, [&](auto t) { launch_mixed<decltype(t)::value>(xq, sx, xo, cols, k_out, q, scale, y, K, N, stream); });
}

cudaError_t int8_weight_only(int T, const float* x, const int8_t* q, const float* scale, float* y, int K, int N,
                             cudaStream_t stream) {
  return for_tokens(T, [&](auto t) { launch_weight_only<decltype(t)::value>(x, q, scale, y, K, N, stream); });
}

}  // namespace cascade::stage::cuda
