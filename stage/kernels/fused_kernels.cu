// The CUDA side of stage/fused_kernels.h: raw pointers only (no LibTorch headers).
// Each kernel reproduces the rounding of the ATen ops it replaces: products and sums
// are rounded to the storage type where ATen would round them, with no FMA contraction.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "config/env.h"
#include "stage/kernels/small_gemm.cuh"

namespace cascade::stage::cuda {
namespace {

constexpr int kThreads = 256;

// LlamaRMSNorm, one block per row: y = w * to_S(x * rsqrt(mean(x^2) + eps)), the
// normalisation in float32.
template <typename S>
__global__ void rms_norm_kernel(const S* __restrict__ x, const S* __restrict__ w, S* __restrict__ y, int H, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * H;
  wait_for_prior_grid();
  allow_next_grid();
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += kThreads) {
    const float v = load(x, row + i);
    ss = __fmaf_rn(v, v, ss);
  }
  __shared__ float part[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < kThreads / 32 ? part[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float r = rsqrtf(__fadd_rn(__fdiv_rn(part[0], static_cast<float>(H)), eps));
  for (int i = threadIdx.x; i < H; i += kThreads) {
    const float n = round_to<S>(__fmul_rn(load(x, row + i), r));
    store(y, row + i, __fmul_rn(load(w, i), n));
  }
}

// The same for rows whose 16-byte vectors fit the block's registers (H % V == 0, V =
// 16 / sizeof(S), at most kVecs vectors a thread): each thread loads its part of the row
// and of w once, before a single block reduction, instead of walking the row twice in
// 2-byte steps. At batch 1 the norm is one block, so its cost is that chain's latency.
template <typename S, int kVecs>
__global__ void __launch_bounds__(1024)
    rms_norm_vec_kernel(const S* __restrict__ x, const S* __restrict__ w, S* __restrict__ y, int H, float eps) {
  constexpr int V = 16 / static_cast<int>(sizeof(S));
  const int64_t row = static_cast<int64_t>(blockIdx.x) * H;
  const int nv = H / V;
  int4 xv[kVecs], wv[kVecs];
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {  // w is no earlier kernel's output: read before the wait
    const int i = threadIdx.x + j * blockDim.x;
    if (i < nv) wv[j] = __ldg(reinterpret_cast<const int4*>(w) + i);
  }
  wait_for_prior_grid();
  allow_next_grid();
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i >= nv) continue;
    xv[j] = __ldg(reinterpret_cast<const int4*>(x + row) + i);
    const S* e = reinterpret_cast<const S*>(&xv[j]);
#pragma unroll
    for (int k = 0; k < V; ++k) ss = __fmaf_rn(load(e, k), load(e, k), ss);
  }
  __shared__ float part[32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float r = rsqrtf(__fadd_rn(__fdiv_rn(part[0], static_cast<float>(H)), eps));
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i >= nv) continue;
    const S* e = reinterpret_cast<const S*>(&xv[j]);
    const S* g = reinterpret_cast<const S*>(&wv[j]);
    int4 out;
    S* o = reinterpret_cast<S*>(&out);
#pragma unroll
    for (int k = 0; k < V; ++k) store(o, k, __fmul_rn(load(g, k), round_to<S>(__fmul_rn(load(e, k), r))));
    reinterpret_cast<int4*>(y + row)[i] = out;
  }
}

// RoPE over x [tokens, heads, dim] (token stride x_row elements, heads packed) into y
// [tokens, heads, dim] contiguous; cos, sin [tokens, dim]. One block per (token, head).
template <typename S>
__global__ void rope_kernel(const S* __restrict__ x, int64_t x_row, const S* __restrict__ cos,
                            const S* __restrict__ sin, S* __restrict__ y, int heads, int dim) {
  const int64_t tok = blockIdx.x / heads, h = blockIdx.x % heads;
  wait_for_prior_grid();
  allow_next_grid();
  rope_row(x + tok * x_row + h * dim, cos + tok * dim, sin + tok * dim, y + static_cast<int64_t>(blockIdx.x) * dim,
           dim);
}

// y[t, n] = round(act(g)) * u with g = gu[t, n], u = gu[t, N + n]: ATen's activation
// (rounded to S) then its product. Grid-stride over T * N.
template <typename S>
__global__ void gated_act_kernel(const S* __restrict__ gu, S* __restrict__ y, int64_t T, int N, int act) {
  wait_for_prior_grid();
  allow_next_grid();
  const int64_t total = T * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / N, n = i % N;
    const float g = load(gu, t * 2 * N + n), u = load(gu, t * 2 * N + N + n);
    store(y, i, __fmul_rn(round_to<S>(gemv::activation(act, g)), u));
  }
}

template <typename S>
cudaError_t gated_act_as(const void* gu, void* y, int64_t T, int N, int act, cudaStream_t stream) {
  const int64_t total = T * N;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 1024));
  return launch_overlapped(gated_act_kernel<S>, dim3(blocks), dim3(threads), stream, static_cast<const S*>(gu),
                           static_cast<S*>(y), T, N, act);
}

// The 16-bit weights' GEMVs (the int8 ones are in int8_kernels.cu).
template <int E>
cudaError_t gemv_dtype(const GemvArgs& g, cudaStream_t stream) {
  if (g.int8) return gemv::launch_int8(E, g, stream);
  switch (g.dtype) {
    case 1:
      return gemv::launch<E, __half, __half>(g, stream);
    case 2:
      return gemv::launch<E, __nv_bfloat16, __nv_bfloat16>(g, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename S>
void rms_norm_as(const void* x, const void* w, void* y, int rows, int H, float eps, cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(S));
  const auto xs = static_cast<const S*>(x), ws = static_cast<const S*>(w);
  const auto ys = static_cast<S*>(y);
  const int nv = H / V, threads = nv < 1024 ? (nv + 31) / 32 * 32 : 1024, vecs = (nv + threads - 1) / threads;
  if (H % V == 0 && aligned16(x) && aligned16(w) && aligned16(y) && vecs <= 4) {
    const dim3 grid(rows), block(threads);
    if (vecs == 1)
      launch_overlapped(rms_norm_vec_kernel<S, 1>, grid, block, stream, xs, ws, ys, H, eps);
    else if (vecs == 2)
      launch_overlapped(rms_norm_vec_kernel<S, 2>, grid, block, stream, xs, ws, ys, H, eps);
    else
      launch_overlapped(rms_norm_vec_kernel<S, 4>, grid, block, stream, xs, ws, ys, H, eps);
    return;
  }
  launch_overlapped(rms_norm_kernel<S>, dim3(rows), dim3(kThreads), stream, xs, ws, ys, H, eps);
}

template <typename S>
void rope_as(const void* x, int64_t x_row, const void* cos, const void* sin, void* y, int tokens, int heads, int dim,
             cudaStream_t stream) {
  const int threads = dim < 32 ? 32 : (dim > 256 ? 256 : dim);
  launch_overlapped(rope_kernel<S>, dim3(tokens * heads), dim3(threads), stream, static_cast<const S*>(x), x_row,
                    static_cast<const S*>(cos), static_cast<const S*>(sin), static_cast<S*>(y), heads, dim);
}

// The device attributes asked, each with its slot in device_attribute's cache.
constexpr cudaDeviceAttr kAsked[] = {cudaDevAttrComputeCapabilityMajor, cudaDevAttrMultiProcessorCount};

// An attribute of the current device (one of kAsked), asked once per device; `fallback`
// where it cannot be asked.
int device_attribute(cudaDeviceAttr what, int fallback) {
  constexpr int kDevices = 64, kAttributes = sizeof kAsked / sizeof kAsked[0];
  static std::atomic<int64_t> known[kDevices][kAttributes];  // 0 not asked yet, else 2^32 + the value
  const int which = static_cast<int>(std::find(kAsked, kAsked + kAttributes, what) - kAsked);
  int dev = 0;
  if (which == kAttributes || cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kDevices) return fallback;
  std::atomic<int64_t>& slot = known[dev][which];
  int64_t k = slot.load(std::memory_order_relaxed);
  if (k == 0) {
    int v = fallback;
    if (cudaDeviceGetAttribute(&v, what, dev) != cudaSuccess) v = fallback;
    k = (int64_t{1} << 32) + v;
    slot.store(k, std::memory_order_relaxed);
  }
  return static_cast<int>(k - (int64_t{1} << 32));
}

int compute_major() { return device_attribute(cudaDevAttrComputeCapabilityMajor, -1); }

// CASCADE_TENSOR_CORE_GEMV: 0 unset, -1 off ("0" or not a count), else N in [1, 65].
int tensor_core_setting() {
  static const int from = [] {
    const std::optional<long> v = config::env_int("CASCADE_TENSOR_CORE_GEMV");
    if (!v) return 0;
    return *v >= 1 && *v <= 65 ? static_cast<int>(*v) : -1;
  }();
  return from;
}

}  // namespace

int multiprocessors() { return device_attribute(cudaDevAttrMultiProcessorCount, 1); }

int mma_split_setting() {
  static const int set = [] {
    const std::optional<long> v = config::env_int("CASCADE_MMA_SPLIT");
    return v && *v >= 1 && *v <= gemv::kMaxSplits ? static_cast<int>(*v) : 0;
  }();
  return set;
}

bool gemv_one_wave() {
  static const bool enabled = config::env_flag("CASCADE_GEMV_ONE_WAVE", true);
  return enabled;
}

bool overlapped_launches() {
  static const bool enabled = config::env_flag("CASCADE_PDL", true);
  return enabled && compute_major() >= 9;
}

int tensor_core_from(bool int8) {
  const int from = tensor_core_setting();
  if (from < 0 || compute_major() < 8) return 0;
  // bench/gpu_gemv_bench on the H200, summed over a layer's four projections: int8 rows
  // read faster on the tensor cores from 2 tokens on; 16-bit rows between 4 tokens (GEMV
  // 68 us, tensor cores 72) and 8 (111 against 75).
  return from > 0 ? from : (int8 ? 2 : 5);
}

bool tensor_core_applies(const GemvArgs& g) {
  return g.dtype != 0 && tensor_core_from(g.int8) > 0 && g.K % (g.int8 ? 64 : 32) == 0;
}

int gemv_max_tokens(const GemvArgs& g) {
  const bool tc = tensor_core_applies(g);
  if (g.int8) return tc ? gemv::kMmaMaxTokens : 32;
  return tc && tensor_core_setting() > 0 ? gemv::kMmaMaxTokens : kMaxTokens;  // a set threshold: up to 64
}

// dtype: 0 float32, 1 float16, 2 bfloat16.
cudaError_t fused_rms_norm(int dtype, const void* x, const void* w, void* y, int rows, int H, float eps,
                           cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  switch (dtype) {
    case 0:
      rms_norm_as<float>(x, w, y, rows, H, eps, stream);
      break;
    case 1:
      rms_norm_as<__half>(x, w, y, rows, H, eps, stream);
      break;
    case 2:
      rms_norm_as<__nv_bfloat16>(x, w, y, rows, H, eps, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t fused_gemv(const GemvArgs& g, cudaStream_t stream) {
  return g.r ? gemv_dtype<gemv::kResidual>(g, stream) : gemv_dtype<gemv::kPlain>(g, stream);
}

cudaError_t fused_gemv_gated(const GemvArgs& g, cudaStream_t stream) { return gemv_dtype<gemv::kGated>(g, stream); }

cudaError_t fused_gated_act(int dtype, const void* gu, void* y, int64_t T, int N, int act, cudaStream_t stream) {
  if (T <= 0 || N <= 0) return cudaSuccess;
  switch (dtype) {
    case 0:
      return gated_act_as<float>(gu, y, T, N, act, stream);
    case 1:
      return gated_act_as<__half>(gu, y, T, N, act, stream);
    case 2:
      return gated_act_as<__nv_bfloat16>(gu, y, T, N, act, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t fused_rope(int dtype, const void* x, int64_t x_row, const void* cos, const void* sin, void* y, int tokens,
                       int heads, int dim, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  switch (dtype) {
    case 0:
      rope_as<float>(x, x_row, cos, sin, y, tokens, heads, dim, stream);
      break;
    case 1:
      rope_as<__half>(x, x_row, cos, sin, y, tokens, heads, dim, stream);
      break;
    case 2:
      rope_as<__nv_bfloat16>(x, x_row, cos, sin, y, tokens, heads, dim, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cascade::stage::cuda
