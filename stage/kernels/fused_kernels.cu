// The CUDA side of stage/fused_kernels.h: raw pointers only (no LibTorch headers).
// Each kernel reproduces the rounding of the ATen ops it replaces: products and sums
// are rounded to the storage type where ATen would round them, with no FMA contraction.
#include "stage/kernels/cuda_common.cuh"

namespace cascade::stage::cuda {
namespace {

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

constexpr int kThreads = 256;

// LlamaRMSNorm, one block per row: y = w * to_S(x * rsqrt(mean(x^2) + eps)), the
// normalisation in float32.
template <typename S>
__global__ void rms_norm_kernel(const S* __restrict__ x, const S* __restrict__ w, S* __restrict__ y, int H, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * H;
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

// HF's apply_rotary_pos_emb for one tensor: y = x * cos + rotate_half(x) * sin, each
// product and the sum rounded to S. x, y [tokens, heads, dim]; cos, sin [tokens, dim].
template <typename S>
__global__ void rope_kernel(const S* __restrict__ x, const S* __restrict__ cos, const S* __restrict__ sin,
                            S* __restrict__ y, int heads, int dim) {
  const int64_t tok = blockIdx.x / heads;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  const int half = dim / 2;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float xi = load(x, base + i);
    const float rot = i < half ? -load(x, base + i + half) : load(x, base + i - half);
    const float a = round_to<S>(__fmul_rn(xi, load(cos, tok * dim + i)));
    const float b = round_to<S>(__fmul_rn(rot, load(sin, tok * dim + i)));
    store(y, base + i, __fadd_rn(a, b));
  }
}

// y[t, n] = sum_k x[t, k] w[n, k] (+ b[n]) for a few tokens: one warp per weight row,
// 16 bytes (8 values) per lane per load, the row read once for all T tokens. cuBLAS's
// GEMV-shaped kernels reach about 60% of HBM bandwidth on these shapes (the profile in
// docs/performance.md); a decode step is mostly this.
constexpr int kGemvWarps = 4;
template <int T, typename S>
__global__ void gemv_kernel(const S* __restrict__ x, const S* __restrict__ w, const S* __restrict__ b,
                            S* __restrict__ y, int K, int N) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  if (n >= N) return;
  const int4* row = reinterpret_cast<const int4*>(w + static_cast<int64_t>(n) * K);
  const int vecs = K / 8;
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
#pragma unroll 4
  for (int v = lane; v < vecs; v += 32) {
    const int4 wv = __ldg(row + v);
    const S* we = reinterpret_cast<const S*>(&wv);
    float wf[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) wf[i] = load(we, i);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const int4 xv = __ldg(reinterpret_cast<const int4*>(x + static_cast<int64_t>(t) * K) + v);
      const S* xe = reinterpret_cast<const S*>(&xv);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[t] = __fmaf_rn(load(xe, i), wf[i], acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float sum = warp_sum(acc[t]);
    if (lane == 0) store(y, static_cast<int64_t>(t) * N + n, b ? sum + load(b, n) : sum);
  }
}

template <int T, typename S>
void gemv_t(const void* x, const void* w, const void* b, void* y, int K, int N, cudaStream_t stream) {
  gemv_kernel<T, S><<<(N + kGemvWarps - 1) / kGemvWarps, 32 * kGemvWarps, 0, stream>>>(
      static_cast<const S*>(x), static_cast<const S*>(w), static_cast<const S*>(b), static_cast<S*>(y), K, N);
}

template <typename S>
cudaError_t gemv_as(int T, const void* x, const void* w, const void* b, void* y, int K, int N, cudaStream_t stream) {
  return for_tokens(T, [&](auto t) { gemv_t<decltype(t)::value, S>(x, w, b, y, K, N, stream); });
}

template <typename S>
void rms_norm_as(const void* x, const void* w, void* y, int rows, int H, float eps, cudaStream_t stream) {
  rms_norm_kernel<S>
      <<<rows, kThreads, 0, stream>>>(static_cast<const S*>(x), static_cast<const S*>(w), static_cast<S*>(y), H, eps);
}

template <typename S>
void rope_as(const void* x, const void* cos, const void* sin, void* y, int tokens, int heads, int dim,
             cudaStream_t stream) {
  const int threads = dim < 32 ? 32 : (dim > 256 ? 256 : dim);
  rope_kernel<S><<<tokens * heads, threads, 0, stream>>>(static_cast<const S*>(x), static_cast<const S*>(cos),
                                                         static_cast<const S*>(sin), static_cast<S*>(y), heads, dim);
}

}  // namespace

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

// dtype: 1 float16, 2 bfloat16; T in [1, 8]; K % 8 == 0; rows 16-byte aligned; b may be null.
cudaError_t fused_gemv(int dtype, int T, const void* x, const void* w, const void* b, void* y, int K, int N,
                       cudaStream_t stream) {
  switch (dtype) {
    case 1:
      return gemv_as<__half>(T, x, w, b, y, K, N, stream);
    case 2:
      return gemv_as<__nv_bfloat16>(T, x, w, b, y, K, N, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t fused_rope(int dtype, const void* x, const void* cos, const void* sin, void* y, int tokens, int heads,
                       int dim, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  switch (dtype) {
    case 0:
      rope_as<float>(x, cos, sin, y, tokens, heads, dim, stream);
      break;
    case 1:
      rope_as<__half>(x, cos, sin, y, tokens, heads, dim, stream);
      break;
    case 2:
      rope_as<__nv_bfloat16>(x, cos, sin, y, tokens, heads, dim, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cascade::stage::cuda
