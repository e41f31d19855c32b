// The CUDA side of stage/int8_kernels.h (LLM.int8 with outliers) and the int8
// instantiations of the decode projections (gemv.cuh, small_gemm.cuh: weight-only int8): raw pointers only (no
// LibTorch headers, so nvcc compiles it against the toolkit alone).
#include "stage/kernels/small_gemm.cuh"

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

// LLM.int8's activation split (int8_kernels.h, int8_split_kernel) in one block. Column
// maxima go to `colmax`; the outliers are found by rounds of block argmax, each round's
// winner marked -1 there so its owner thread rescans only its own columns; the rounds stop
// at `slots` or at the first maximum below the threshold, so their order is topk's.
constexpr int kSplitThreads = 1024;

template <typename S>
__global__ void __launch_bounds__(kSplitThreads)
    split_kernel(const S* __restrict__ x, int T, int K, float threshold, int slots, float* __restrict__ colmax,
                 int8_t* __restrict__ xq, float* __restrict__ sx, int64_t* __restrict__ cols, float* __restrict__ xo) {
  __shared__ float red_v[32], row_part[32][kMaxTokens], s_sx[kMaxTokens];
  __shared__ int red_i[32], chosen[32], n_out;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
  wait_for_prior_grid();
  allow_next_grid();
  float best = -1.f;
  int best_k = -1;
  for (int k = tid; k < K; k += blockDim.x) {
    float m = 0.f;
    for (int t = 0; t < T; ++t) m = fmaxf(m, fabsf(load(x, static_cast<int64_t>(t) * K + k)));
    colmax[k] = m;
    if (m > best) best = m, best_k = k;
  }
  if (tid == 0) n_out = 0;
  for (int r = 0; r < slots; ++r) {
    float v = best;
    int i = best_k;
    const auto argmax = [&] {  // the larger value; of equal ones, the lower column
      for (int o = 16; o > 0; o /= 2) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi >= 0 && (i < 0 || oi < i))) v = ov, i = oi;
      }
    };
    argmax();
    __syncthreads();  // the previous round's readers are done with red_v/red_i
    if (lane == 0) red_v[warp] = v, red_i[warp] = i;
    __syncthreads();
    v = lane < warps ? red_v[lane] : -1.f;
    i = lane < warps ? red_i[lane] : -1;
    argmax();                               // every warp reduces the same 32 values: each thread gets the winner
    if (i < 0 || !(v >= threshold)) break;  // the same decision in every thread
    if (tid == 0) chosen[r] = i, n_out = r + 1;
    if (i % static_cast<int>(blockDim.x) == tid) {  // the winner's owner: mark it, rescan
      colmax[i] = -1.f;
      best = -1.f;
      best_k = -1;
      for (int k = tid; k < K; k += blockDim.x)
        if (colmax[k] > best) best = colmax[k], best_k = k;
    }
  }
  __syncthreads();
  // Row scales over the regular columns (colmax >= 0), then the int8 rows.
  float rm[kMaxTokens];
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t) rm[t] = 0.f;
  for (int k = tid; k < K; k += blockDim.x) {
    if (colmax[k] < 0.f) continue;
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t)
      if (t < T) rm[t] = fmaxf(rm[t], fabsf(load(x, static_cast<int64_t>(t) * K + k)));
  }
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t) {
    for (int o = 16; o > 0; o /= 2) rm[t] = fmaxf(rm[t], __shfl_xor_sync(0xffffffffu, rm[t], o));
    if (lane == 0) row_part[warp][t] = rm[t];
  }
  __syncthreads();
  if (tid < T) {
    float m = 0.f;
    for (int w = 0; w < warps; ++w) m = fmaxf(m, row_part[w][tid]);
    s_sx[tid] = fmaxf(__fdiv_rn(m, 127.f), 1e-12f);
    sx[tid] = s_sx[tid];
  }
  __syncthreads();
  for (int k = tid; k < K; k += blockDim.x) {
    const bool outlier = colmax[k] < 0.f;
    for (int t = 0; t < T; ++t) {
      const int64_t at = static_cast<int64_t>(t) * K + k;
      const float q = outlier ? 0.f : fminf(fmaxf(rintf(__fdiv_rn(load(x, at), s_sx[t])), -127.f), 127.f);
      xq[at] = static_cast<int8_t>(q);
    }
  }
  const int n = n_out;
  if (tid < slots) cols[tid] = tid < n ? chosen[tid] : 0;
  if (tid < slots * T) {
    const int j = tid % slots, t = tid / slots;
    xo[t * slots + j] = j < n ? load(x, static_cast<int64_t>(t) * K + chosen[j]) : 0.f;
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

cudaError_t int8_split(int dtype, const void* x, int T, int K, float threshold, int slots, float* colmax, int8_t* xq,
                       float* sx, int64_t* cols, float* xo, cudaStream_t stream) {
  if (T < 1 || T > kMaxTokens || slots < 1 || slots > 32 || K < slots) return cudaErrorInvalidValue;
  const dim3 grid(1), block(kSplitThreads);
  switch (dtype) {
    case 0:
      split_kernel<<<grid, block, 0, stream>>>(static_cast<const float*>(x), T, K, threshold, slots, colmax, xq, sx,
                                               cols, xo);
      break;
    case 1:
      split_kernel<<<grid, block, 0, stream>>>(static_cast<const __half*>(x), T, K, threshold, slots, colmax, xq, sx,
                                               cols, xo);
      break;
    case 2:
      split_kernel<<<grid, block, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), T, K, threshold, slots, colmax, xq,
                                               sx, cols, xo);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
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
