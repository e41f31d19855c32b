// The CUDA side of stage/int8_kernels.h (LLM.int8 with outliers) and the int8
// instantiations of the decode GEMV (gemv.cuh, weight-only int8): raw pointers only (no
// LibTorch headers, so nvcc compiles it against the toolkit alone).
#include "stage/kernels/gemv.cuh"

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
void launch_mixed(const int8_t* xq, const float* sx, const float* xo, const int64_t* cols, int k_out, const int8_t* q,
                  const float* scale, float* y, int K, int N, cudaStream_t stream) {
  const dim3 grid((N + kWarpsPerBlock - 1) / kWarpsPerBlock), block(kWarp * kWarpsPerBlock);
  mixed_kernel<T><<<grid, block, 0, stream>>>(xq, sx, xo, cols, k_out, q, scale, y, K, N);
}

}  // namespace

cudaError_t int8_mixed(int T, const int8_t* xq, const float* sx, const float* xo, const int64_t* cols, int k_out,
                       const int8_t* q, const float* scale, float* y, int K, int N, cudaStream_t stream) {
  return for_tokens(
      T, [&](auto t) { launch_mixed<decltype(t)::value>(xq, sx, xo, cols, k_out, q, scale, y, K, N, stream); });
}

namespace gemv {

cudaError_t launch_int8(int epilogue, const GemvArgs& g, cudaStream_t stream) {
  if (g.dtype == 0) return epilogue == kPlain ? launch<kPlain, float, int8_t>(g, stream) : cudaErrorInvalidValue;
  const auto with = [&](auto s) {
    using S = decltype(s);
    switch (epilogue) {
      case kPlain:
        return launch<kPlain, S, int8_t>(g, stream);
      case kResidual:
        return launch<kResidual, S, int8_t>(g, stream);
      default:
        return launch<kGated, S, int8_t>(g, stream);
    }
  };
  switch (g.dtype) {
    case 1:
      return with(__half());
    case 2:
      return with(__nv_bfloat16());
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace gemv

}  // namespace cascade::stage::cuda
