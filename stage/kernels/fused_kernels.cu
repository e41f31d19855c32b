// The CUDA side of stage/fused_kernels.h: raw pointers only (no LibTorch headers).
// Each kernel reproduces the rounding of the ATen ops it replaces: products and sums
// are rounded to the storage type where ATen would round them, with no FMA contraction.
#include <atomic>
#include <cstdlib>
#include <string>

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

// HF's apply_rotary_pos_emb for one tensor: y = x * cos + rotate_half(x) * sin, each
// product and the sum rounded to S. x, y [tokens, heads, dim]; cos, sin [tokens, dim].
template <typename S>
__global__ void rope_kernel(const S* __restrict__ x, const S* __restrict__ cos, const S* __restrict__ sin,
                            S* __restrict__ y, int heads, int dim) {
  const int64_t tok = blockIdx.x / heads;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  const int half = dim / 2;
  wait_for_prior_grid();
  allow_next_grid();
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float xi = load(x, base + i);
    const float rot = i < half ? -load(x, base + i + half) : load(x, base + i - half);
    const float a = round_to<S>(__fmul_rn(xi, load(cos, tok * dim + i)));
    const float b = round_to<S>(__fmul_rn(rot, load(sin, tok * dim + i)));
    store(y, base + i, __fadd_rn(a, b));
  }
}

// The decode GEMV: y[t, n] = sum_k x[t, k] w[n, k] for a few tokens, each weight row
// read once for all T tokens, 16 bytes (8 values) per thread per load and kUnroll loads
// in flight before the first use. TPR threads share a row (one to four warps): a step's
// small projections (o_proj, down_proj: 2,560 rows) need several warps per row to keep
// enough bytes in flight; at one warp per row they reached 52% of HBM (the profile in
// docs/performance.md). The epilogue is one of:
//   kPlain    y = s + b                      (rounded once, as at::linear)
//   kResidual y = r + round(s + b)           (at::linear, then the residual add)
//   kGated    y = round(act(round(g))) * round(u), g and u the rows n and n + N of a
//             fused gate/up weight [2N, K] (the gated MLP's activation and product)
enum Epilogue { kPlain, kResidual, kGated };
constexpr int kGemvThreads = 256, kUnroll = 4;

__device__ inline float activation(int act, float v) {
  switch (act) {
    case 0:  // silu
      return v / (1.f + expf(-v));
    case 1:  // relu
      return v > 0.f ? v : 0.f;
    case 2:  // gelu (erf)
      return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    default:  // gelu, tanh approximation
      return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
  }
}

// Sums `acc` over the TPR threads of each row; the result is valid in the row's first thread.
template <int T, int TPR>
__device__ inline void row_sum(float (&acc)[T]) {
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = warp_sum(acc[t]);
  if constexpr (TPR > 32) {
    __shared__ float part[kGemvThreads / 32][T];
    const int warp = threadIdx.x / 32;
    __syncthreads();  // a previous call's readers are done with `part`
    if (threadIdx.x % 32 == 0) {
#pragma unroll
      for (int t = 0; t < T; ++t) part[warp][t] = acc[t];
    }
    __syncthreads();
    if (threadIdx.x % TPR == 0) {
#pragma unroll
      for (int t = 0; t < T; ++t) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < TPR / 32; ++i) s += part[warp + i][t];
        acc[t] = s;
      }
    }
  }
}

// acc[t] += x[t, 8v .. 8v + 8) . w8
template <int T, typename S>
__device__ inline void dot8(const S* __restrict__ x, int K, int v, const int4& wv, float (&acc)[T]) {
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

template <int T, int TPR, int E, typename S>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const S* __restrict__ x, const S* __restrict__ w, const S* __restrict__ b, const S* __restrict__ r,
                S* __restrict__ y, int K, int N, int act) {
  constexpr int kRows = kGemvThreads / TPR;
  const int n = blockIdx.x * kRows + threadIdx.x / TPR, lane = threadIdx.x % TPR;
  const bool live = n < N;  // no early return: row_sum may synchronise the block
  const int vecs = K / 8;
  const int4* row = reinterpret_cast<const int4*>(w + static_cast<int64_t>(live ? n : 0) * K);
  const int4* row2 = E == kGated ? row + static_cast<int64_t>(N) * vecs : row;  // the up row
  float acc[T], acc2[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = acc2[t] = 0.f;
  int4 wv[kUnroll], wv2[kUnroll];
  // The first loads are issued before the wait: the weights are no earlier kernel's output.
  const auto fetch = [&](int base) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = base + u * TPR;
      if (live && v < vecs) {
        wv[u] = __ldg(row + v);
        if (E == kGated) wv2[u] = __ldg(row2 + v);
      }
    }
  };
  fetch(lane);
  wait_for_prior_grid();
  allow_next_grid();
  for (int base = lane; live && base < vecs; base += TPR * kUnroll) {
    if (base != lane) fetch(base);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = base + u * TPR;
      if (v < vecs) {
        dot8<T, S>(x, K, v, wv[u], acc);
        if (E == kGated) dot8<T, S>(x, K, v, wv2[u], acc2);
      }
    }
  }
  row_sum<T, TPR>(acc);
  if (E == kGated) row_sum<T, TPR>(acc2);
  if (!live || lane != 0) return;
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int64_t at = static_cast<int64_t>(t) * N + n;
    if (E == kGated) {
      const float g = round_to<S>(acc[t]), u = round_to<S>(acc2[t]);
      store(y, at, __fmul_rn(round_to<S>(activation(act, g)), u));
    } else {
      const float s = b ? acc[t] + load(b, n) : acc[t];
      store(y, at, E == kResidual ? __fadd_rn(load(r, at), round_to<S>(s)) : s);
    }
  }
}

// Threads per row: enough rows' loads in flight to cover HBM latency on every shape.
int threads_per_row(int N) { return N >= 8192 ? 32 : (N >= 4096 ? 64 : 128); }

template <int T, int TPR, int E, typename S>
void gemv_t(const void* x, const void* w, const void* b, const void* r, void* y, int K, int N, int act,
            cudaStream_t stream) {
  constexpr int kRows = kGemvThreads / TPR;
  launch_overlapped(gemv_kernel<T, TPR, E, S>, dim3((N + kRows - 1) / kRows), dim3(kGemvThreads), stream,
                    static_cast<const S*>(x), static_cast<const S*>(w), static_cast<const S*>(b),
                    static_cast<const S*>(r), static_cast<S*>(y), K, N, act);
}

template <int E, typename S>
cudaError_t gemv_as(int T, const void* x, const void* w, const void* b, const void* r, void* y, int K, int N, int act,
                    cudaStream_t stream) {
  const int tpr = threads_per_row(E == kGated ? 2 * N : N);
  return for_tokens(T, [&](auto t) {
    constexpr int kT = decltype(t)::value;
    if (tpr == 32)
      gemv_t<kT, 32, E, S>(x, w, b, r, y, K, N, act, stream);
    else if (tpr == 64)
      gemv_t<kT, 64, E, S>(x, w, b, r, y, K, N, act, stream);
    else
      gemv_t<kT, 128, E, S>(x, w, b, r, y, K, N, act, stream);
  });
}

template <int E>
cudaError_t gemv_dtype(int dtype, int T, const void* x, const void* w, const void* b, const void* r, void* y, int K,
                       int N, int act, cudaStream_t stream) {
  switch (dtype) {
    case 1:
      return gemv_as<E, __half>(T, x, w, b, r, y, K, N, act, stream);
    case 2:
      return gemv_as<E, __nv_bfloat16>(T, x, w, b, r, y, K, N, act, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template <typename S>
void rms_norm_as(const void* x, const void* w, void* y, int rows, int H, float eps, cudaStream_t stream) {
  launch_overlapped(rms_norm_kernel<S>, dim3(rows), dim3(kThreads), stream, static_cast<const S*>(x),
                    static_cast<const S*>(w), static_cast<S*>(y), H, eps);
}

template <typename S>
void rope_as(const void* x, const void* cos, const void* sin, void* y, int tokens, int heads, int dim,
             cudaStream_t stream) {
  const int threads = dim < 32 ? 32 : (dim > 256 ? 256 : dim);
  launch_overlapped(rope_kernel<S>, dim3(tokens * heads), dim3(threads), stream, static_cast<const S*>(x),
                    static_cast<const S*>(cos), static_cast<const S*>(sin), static_cast<S*>(y), heads, dim);
}

}  // namespace

bool overlapped_launches() {
  static const bool enabled = [] {
    const char* e = std::getenv("CASCADE_PDL");
    return !(e && std::string(e) == "0");
  }();
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices];  // 0 not asked yet, 1 no, 2 yes
  int dev = 0;
  if (!enabled || cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kDevices) return false;
  int k = known[dev].load(std::memory_order_relaxed);
  if (k == 0) {
    int major = 0;
    k = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9 ? 2 : 1;
    known[dev].store(k, std::memory_order_relaxed);
  }
  return k == 2;
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

cudaError_t fused_gemv(int dtype, int T, const void* x, const void* w, const void* b, void* y, int K, int N,
                       cudaStream_t stream) {
  return gemv_dtype<kPlain>(dtype, T, x, w, b, nullptr, y, K, N, 0, stream);
}

cudaError_t fused_gemv_add(int dtype, int T, const void* x, const void* w, const void* b, const void* r, void* y, int K,
                           int N, cudaStream_t stream) {
  return gemv_dtype<kResidual>(dtype, T, x, w, b, r, y, K, N, 0, stream);
}

cudaError_t fused_gemv_gated(int dtype, int T, const void* x, const void* w, int act, void* y, int K, int N,
                             cudaStream_t stream) {
  return gemv_dtype<kGated>(dtype, T, x, w, nullptr, nullptr, y, K, N, act, stream);
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
