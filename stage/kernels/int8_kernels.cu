// The CUDA side of stage/int8_kernels.h (LLM.int8's activation split) and the int8
// instantiations of the decode projections (gemv.cuh, small_gemm.cuh: weight-only int8,
// and the pairs of LLM.int8 with outliers): raw pointers only (no LibTorch headers, so
// nvcc compiles it against the toolkit alone).
#include <cstdint>

#include "stage/kernels/small_gemm.cuh"

namespace cascade::stage::cuda {
namespace {

// LLM.int8's activation split (cuda_kernels.h, int8_split): one block a token, as the
// tokens are split apart. A row's outliers are its values with |x| >= threshold; where
// there are more than `slots`, rounds of block max find the slots-th largest and the
// outliers are those at least as large (ties at that value may add a few).
//
// Each thread loads its kVecs 16-byte vectors of the row once, all in flight together,
// and every pass runs on registers: a pass that walked the row from memory in 2-byte
// steps waited a memory latency per element (9.6 us a split at batch 1, the profile).

// The block's maximum of v (every thread gets it); `red` holds a value per warp.
__device__ inline float block_max(float v, float* red) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // the previous call's readers are done with red
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  v = threadIdx.x % 32 < blockDim.x / 32 ? red[threadIdx.x % 32] : 0.f;
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum of v over the block's threads before this one (in thread order), and in
// *total over all; `red` holds a value per warp. blockDim.x a multiple of 32.
__device__ inline int block_exclusive_sum(int v, int* red, int* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int in = v;  // inclusive, within the warp
  for (int o = 1; o < 32; o *= 2) {
    const int u = __shfl_up_sync(0xffffffffu, in, o);
    if (lane >= o) in += u;
  }
  __syncthreads();  // the previous call's readers are done with red
  if (lane == 31) red[warp] = in;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? red[lane] : 0;
    for (int o = 1; o < 32; o *= 2) {
      const int u = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += u;
    }
    red[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  *total = red[warps - 1];
  return (warp ? red[warp - 1] : 0) + in - v;
}

template <typename S, int kVecs>
__global__ void __launch_bounds__(1024) split_kernel(const S* __restrict__ x, int K, float threshold, int slots,
                                                     S* __restrict__ pairs, float* __restrict__ sx) {
  constexpr int V = 16 / static_cast<int>(sizeof(S));  // values a vector
  __shared__ float red[32];
  __shared__ int count, places[32];
  const int64_t t = blockIdx.x;
  const int nv = K / V;
  if (threadIdx.x == 0) count = 0;
  wait_for_prior_grid();
  allow_next_grid();
  float v[kVecs][V];
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    const int4 w = i < nv ? __ldg(reinterpret_cast<const int4*>(x + t * K) + i) : make_int4(0, 0, 0, 0);
    const S* e = reinterpret_cast<const S*>(&w);
#pragma unroll
    for (int k = 0; k < V; ++k) v[j][k] = load(e, k);  // past the row: 0, never an outlier
  }
  const auto each = [&](const auto& f) {
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
#pragma unroll
      for (int k = 0; k < V; ++k) f(v[j][k]);
    }
  };
  // One pass counts the outliers and takes the regular values' absmax: right unless
  // there are more outliers than slots (then rounds of "the largest below the last
  // round's" find the slots-th largest, and the absmax is taken again below it).
  int mine = 0;
  float m = 0.f;
  each([&](float a) {
    if (fabsf(a) >= threshold)
      ++mine;
    else
      m = fmaxf(m, fabsf(a));  // NaN: neither an outlier nor the max (fmaxf drops it)
  });
  __syncthreads();  // count is zeroed
  if (mine) atomicAdd(&count, mine);
  m = block_max(m, red);    // its barriers also publish count
  float least = threshold;  // the smallest outlier value
  if (count > slots) {
    float last = INFINITY;
    for (int r = 0; r < slots; ++r) {
      float best = 0.f;
      each([&](float a) {
        if (fabsf(a) < last) best = fmaxf(best, fabsf(a));
      });
      last = block_max(best, red);
    }
    least = fmaxf(last, threshold);
    m = 0.f;
    each([&](float a) {
      if (!(fabsf(a) >= least)) m = fmaxf(m, fabsf(a));
    });
    m = block_max(m, red);
  }
  const float s = fmaxf(__fdiv_rn(m, 127.f), 1e-12f);
  // The list (cuda_kernels.h): each thread's outliers at its place in thread order.
  int own = 0, listed = 0;
  each([&](float a) { own += fabsf(a) >= least; });
  int place = block_exclusive_sum(own, places, &listed);
  const bool fits = listed <= kSplitList;
  float* side = sx + t * kSplitRow;
  if (threadIdx.x == 0) side[0] = s, side[1] = static_cast<float>(fits ? listed : kSplitList + 1);
  for (int j = threadIdx.x + (fits ? listed : 0); j < kSplitList; j += blockDim.x)
    side[2 + j] = side[2 + kSplitList + j] = 0.f;
  int4* ints = reinterpret_cast<int4*>(pairs + t * K);
  int4* outliers = reinterpret_cast<int4*>(pairs + (gridDim.x + t) * K);
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i >= nv) continue;
    int4 qv, ov;
    S* q = reinterpret_cast<S*>(&qv);
    S* o = reinterpret_cast<S*>(&ov);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const bool outlier = fabsf(v[j][k]) >= least;
      store(q, k, outlier ? 0.f : fminf(fmaxf(rintf(__fdiv_rn(v[j][k], s)), -127.f), 127.f));
      store(o, k, outlier ? v[j][k] : 0.f);
      if (outlier && fits) {
        side[2 + place] = static_cast<float>(i * V + k);
        side[2 + kSplitList + place++] = v[j][k];
      }
    }
    ints[i] = qv;
    outliers[i] = ov;
  }
}

// Threads, and vectors a thread, for rows of K values of S: whole 16-byte vectors, at
// most 8 a thread (K up to 65,536 16-bit values); cudaErrorInvalidValue otherwise.
template <typename S>
cudaError_t split_as(const void* x, int T, int K, float threshold, int slots, void* pairs, float* sx,
                     cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(S));
  const int nv = K / V;
  if (K % V != 0 || nv > 8 * 1024 || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(pairs) % 16 != 0)
    return cudaErrorInvalidValue;
  const int threads = nv < 1024 ? (nv + 31) / 32 * 32 : 1024, vecs = (nv + threads - 1) / threads;
  const auto go = [&](auto kernel) {
    return launch_overlapped(kernel, dim3(T), dim3(threads), stream, static_cast<const S*>(x), K, threshold, slots,
                             static_cast<S*>(pairs), sx);
  };
  if (vecs == 1) return go(split_kernel<S, 1>);
  if (vecs == 2) return go(split_kernel<S, 2>);
  if (vecs <= 4) return go(split_kernel<S, 4>);
  return go(split_kernel<S, 8>);
}

}  // namespace

cudaError_t int8_split(int dtype, const void* x, int T, int K, float threshold, int slots, void* pairs, float* sx,
                       cudaStream_t stream) {
  if (T < 1 || T > kSplitMaxTokens || slots < 1 || K < 1) return cudaErrorInvalidValue;
  switch (dtype) {
    case 0:
      return split_as<float>(x, T, K, threshold, slots, pairs, sx, stream);
    case 1:
      return split_as<__half>(x, T, K, threshold, slots, pairs, sx, stream);
    case 2:
      return split_as<__nv_bfloat16>(x, T, K, threshold, slots, pairs, sx, stream);
    default:
      return cudaErrorInvalidValue;
  }
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
