// The CUDA side of stage/int8_kernels.h (LLM.int8's activation split) and the int8
// instantiations of the decode projections (gemv.cuh, small_gemm.cuh: weight-only int8,
// and the int8 rows of LLM.int8 with outliers): raw pointers only (no LibTorch headers, so
// nvcc compiles it against the toolkit alone).
#include <climits>
#include <cstdint>

#include "stage/kernels/small_gemm.cuh"

namespace cascade::stage::cuda {
namespace {

// LLM.int8's activation split (cuda_kernels.h, int8_split): one block a token, as the
// tokens are split apart. A row's outliers are its values with |x| >= threshold; where
// there are more than `slots`, exactly its `slots` largest, ties at the smallest of them
// taken by column (as stage/kernels/quant.h's ATen split takes them), so the list always
// fits and the result never depends on timing.
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

// Which values are outliers: those over `least`, and of those equal to it the first
// `quota` by column. Thread x holds vectors x + j blockDim.x (j < kVecs); seen[j] counts
// the ties in columns before its vector j's, then its own as it walks them. With quota =
// INT_MAX: every value at or over `least`.
template <int kVecs>
struct Outliers {
  float least;
  int quota, seen[kVecs];
  __device__ bool take(float a, int j) { return fabsf(a) > least || (fabsf(a) == least && seen[j]++ < quota); }
};

// More outliers than slots: rounds of "the next smaller magnitude, and how many hold it"
// until the values at or over it reach `slots` (at most `slots` rounds: each takes one),
// then the ties' places by column, a scan per vector index. `each` walks the thread's
// values as (j, value); `red`, `places` are shared scratch.
template <int kVecs, typename Each>
__device__ inline Outliers<kVecs> largest(const Each& each, int slots, float* red, int* places) {
  float last = INFINITY;
  int above = 0;
  for (bool first = true;; first = false) {
    float best = 0.f;  // infinities are found in the first round; NaN never
    each([&](int, float a) {
      if (first || fabsf(a) < last) best = fmaxf(best, fabsf(a));
    });
    best = block_max(best, red);
    int at = 0, total = 0;
    each([&](int, float a) { at += fabsf(a) == best; });
    block_exclusive_sum(at, places, &total);
    if (above + total < slots) {
      above += total;
      last = best;
      continue;
    }
    Outliers<kVecs> out{best, slots - above, {}};
    int before = 0;  // ties in the vectors of earlier j
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      int in_j = 0, all_j = 0;
      each([&](int i, float a) { in_j += i == j && fabsf(a) == best; });
      out.seen[j] = before + block_exclusive_sum(in_j, places, &all_j);
      before += all_j;
    }
    return out;
  }
}

template <typename S, int kVecs>
__global__ void __launch_bounds__(1024) split_kernel(const S* __restrict__ x, int K, float threshold, int slots,
                                                     S* __restrict__ ints, float* __restrict__ sx) {
  constexpr int V = 16 / static_cast<int>(sizeof(S));  // values a vector
  __shared__ float red[32];
  __shared__ int places[32];
  const int64_t t = blockIdx.x;
  const int nv = K / V;
  wait_for_prior_grid();
  allow_next_grid();
  float v[kVecs][V];
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    const int4 w = i < nv ? __ldg(reinterpret_cast<const int4*>(x + t * K) + i) : make_int4(0, 0, 0, 0);
    const S* e = reinterpret_cast<const S*>(&w);
#pragma unroll
    for (int k = 0; k < V; ++k) v[j][k] = load(e, k);  // past the row: 0, never an outlier (threshold > 0)
  }
  const auto each = [&](const auto& f) {
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
#pragma unroll
      for (int k = 0; k < V; ++k) f(j, v[j][k]);
    }
  };
  // One pass counts the outliers and takes the regular values' absmax, and the scan of
  // the counts places each thread's in the list: all that is needed unless there are
  // more outliers than slots.
  int own = 0, count = 0;
  float m = 0.f;
  each([&](int, float a) {
    if (fabsf(a) >= threshold)
      ++own;
    else
      m = fmaxf(m, fabsf(a));  // NaN: neither an outlier nor the max (fmaxf drops it)
  });
  int place = block_exclusive_sum(own, places, &count);
  m = block_max(m, red);
  Outliers<kVecs> out{threshold, INT_MAX, {}};
  if (count > slots) {  // the int8 part takes the rest: its absmax and places again
    out = largest<kVecs>(each, slots, red, places);
    Outliers<kVecs> walk = out;
    own = 0, m = 0.f;
    each([&](int j, float a) {
      if (walk.take(a, j))
        ++own;
      else
        m = fmaxf(m, fabsf(a));
    });
    place = block_exclusive_sum(own, places, &count);
    m = block_max(m, red);
  }
  const float s = fmaxf(__fdiv_rn(m, 127.f), 1e-12f);
  // The list (cuda_kernels.h): each thread's outliers at its place in thread order.
  float* side = sx + t * kSplitRow;
  if (threadIdx.x == 0) side[0] = s, side[1] = static_cast<float>(count);
  for (int j = count + threadIdx.x; j < kSplitList; j += blockDim.x) side[2 + j] = side[2 + kSplitList + j] = 0.f;
  int4* row = reinterpret_cast<int4*>(ints + t * K);
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i >= nv) continue;
    int4 qv;
    S* q = reinterpret_cast<S*>(&qv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const bool outlier = out.take(v[j][k], j);
      store(q, k, outlier ? 0.f : fminf(fmaxf(rintf(__fdiv_rn(v[j][k], s)), -127.f), 127.f));
      if (outlier) {
        side[2 + place] = static_cast<float>(i * V + k);
        side[2 + kSplitList + place++] = v[j][k];
      }
    }
    row[i] = qv;
  }
}

// Threads, and vectors a thread, for rows of K values of S: whole 16-byte vectors, at
// most 8 a thread (K up to 65,536 16-bit values); cudaErrorInvalidValue otherwise.
template <typename S>
cudaError_t split_as(const void* x, int T, int K, float threshold, int slots, void* ints, float* sx,
                     cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(S));
  const int nv = K / V;
  if (K % V != 0 || nv > 8 * 1024 || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(ints) % 16 != 0)
    return cudaErrorInvalidValue;
  const int threads = nv < 1024 ? (nv + 31) / 32 * 32 : 1024, vecs = (nv + threads - 1) / threads;
  const auto go = [&](auto kernel) {
    return launch_overlapped(kernel, dim3(T), dim3(threads), stream, static_cast<const S*>(x), K, threshold, slots,
                             static_cast<S*>(ints), sx);
  };
  if (vecs == 1) return go(split_kernel<S, 1>);
  if (vecs == 2) return go(split_kernel<S, 2>);
  if (vecs <= 4) return go(split_kernel<S, 4>);
  return go(split_kernel<S, 8>);
}

}  // namespace

cudaError_t int8_split(int dtype, const void* x, int T, int K, float threshold, int slots, void* ints, float* sx,
                       cudaStream_t stream) {
  if (T < 1 || T > kSplitMaxTokens || slots < 1 || slots > kSplitList || K < 1 || !(threshold > 0.f))
    return cudaErrorInvalidValue;
  switch (dtype) {
    case 0:
      return split_as<float>(x, T, K, threshold, slots, ints, sx, stream);
    case 1:
      return split_as<__half>(x, T, K, threshold, slots, ints, sx, stream);
    case 2:
      return split_as<__nv_bfloat16>(x, T, K, threshold, slots, ints, sx, stream);
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
