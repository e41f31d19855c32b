// The decode GEMV kernel (cuda_kernels.h, fused_gemv) for 1 to 8 tokens, and the helpers
// and epilogue it shares with the tensor-core kernel for more (small_gemm.cuh, which
// holds the launch that picks one). One template over the weight type, instantiated in
// fused_kernels.cu (16-bit weights) and int8_kernels.cu (int8 rows with a float32 scale
// per row), so that nvcc builds the two sets in parallel.
//
// y[t, n] = sum_k x[t, k] w[n, k] for a few tokens, each weight row read once for all T
// tokens, 16 bytes per thread per load (8 16-bit or 16 int8 weights) and kUnroll loads in
// flight before the first use. TPR threads share a row (one to four warps): a step's small
// projections (o_proj, down_proj: 2,560 rows) need several warps per row to keep enough
// bytes in flight; at one warp per row they reached 52% of HBM (docs/performance.md).
// At one token, where the rows fit one wave of blocks with every load issued before the
// PDL wait, that grid is taken instead (launch_one_wave).
// int8 weights are widened in registers (a byte permute and a subtraction each) and the
// row's scale multiplies its sum. The epilogue is one of:
//   kPlain    y = s + b                      (rounded once, as at::linear)
//   kResidual y = r + round(s + b)           (at::linear, then the residual add)
//   kGated    y = round(act(round(g))) * round(u), g and u the rows n and n + N of a
//             fused gate/up weight [2N, K] (the gated MLP's activation and product)
// where s = sum (16-bit weights) or scale[n] * sum (int8), rounded as ATen rounds.
// LLM.int8 with outliers (GemvArgs::sx set) reads x as int8_split's int8 rows, and s =
// scale[n] (sx[t][0] sum + outliers' part): the int8 part's sum is of integers (exact in
// float while below 2^24), the outliers' part the products of the few values sx lists
// (with_outliers). A second dense row a token for them doubled the x loads and MMAs, the
// most of an LLM.int8 step at 16 tokens (docs/performance.md, session 35).
#pragma once

#include <type_traits>

#include "stage/kernels/cuda_common.cuh"

namespace cascade::stage::cuda::gemv {

enum Epilogue { kPlain, kResidual, kGated };
constexpr int kThreads = 256, kUnroll = 4;

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

// Sums the first kArrays of (a, b) over the TPR threads of each row in one round through
// shared memory (a round is a block barrier, and a block's life is short: a few loads a
// thread); the results are valid in the row's first thread.
template <int T, int TPR, int kArrays>
__device__ inline void row_sums(float (&a)[T], float (&b)[T]) {
  const auto each = [&](const auto& f) {
#pragma unroll
    for (int t = 0; t < T; ++t) {
      f(a[t], 0, t);
      if (kArrays > 1) f(b[t], 1, t);
    }
  };
  each([](float& v, int, int) { v = warp_sum(v); });
  if constexpr (TPR > 32) {
    __shared__ float part[kThreads / 32][kArrays][T];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) each([&](float& v, int i, int t) { part[warp][i][t] = v; });
    __syncthreads();
    if (threadIdx.x % TPR == 0) {
      each([&](float& v, int i, int t) {
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < TPR / 32; ++w) s += part[warp + w][i][t];
        v = s;
      });
    }
  }
}

template <typename W>
constexpr int kPerLoad = 16 / static_cast<int>(sizeof(W));  // weights in one 16-byte load

// One 16-byte load of weights as floats. An int8 byte b becomes the float with bits
// 0x4B0000xx, xx = b + 128 (2^23 + b + 128, exact), minus 2^23 + 128.
template <typename W>
__device__ inline void unpack(const int4& v, float (&f)[kPerLoad<W>]) {
  if constexpr (std::is_same_v<W, int8_t>) {
    const int words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const unsigned u = static_cast<unsigned>(words[j]) ^ 0x80808080u;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        f[4 * j + i] = __fsub_rn(__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540 + i)), 8388736.f);
    }
  } else {
    const W* e = reinterpret_cast<const W*>(&v);
#pragma unroll
    for (int i = 0; i < kPerLoad<W>; ++i) f[i] = load(e, i);
  }
}

// acc[t] += x[t, n v .. n v + n) . w, n = kPerLoad<W>, for the v-th load of a row.
template <int T, typename S, typename W>
__device__ inline void dot(const S* __restrict__ x, int K, int v, const int4& wv, float (&acc)[T]) {
  constexpr int kW = kPerLoad<W>, kX = kPerLoad<S>;
  static_assert(kW % kX == 0, "a weight load must span whole input loads");
  float wf[kW];
  unpack<W>(wv, wf);
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int4* xr =
        reinterpret_cast<const int4*>(x + static_cast<int64_t>(t) * K) + static_cast<int64_t>(v) * (kW / kX);
#pragma unroll
    for (int j = 0; j < kW / kX; ++j) {
      const int4 xv = __ldg(xr + j);
      const S* xe = reinterpret_cast<const S*>(&xv);
#pragma unroll
      for (int i = 0; i < kX; ++i) acc[t] = __fmaf_rn(load(xe, i), wf[j * kX + i], acc[t]);
    }
  }
}

// Writes y[at] (at = t N + n) from row n's sum s (and, for kGated, row N + n's sum u), as
// the header's epilogue table says; int8 sums are scaled here.
template <int E, bool kInt8, typename S>
__device__ inline void finish(float s, float u, int n, int64_t at, int N, const float* __restrict__ scale,
                              const S* __restrict__ b, const S* __restrict__ r, S* __restrict__ y, int act) {
  if (kInt8) s = __fmul_rn(s, scale[n]);
  if (E == kGated) {
    const float g = round_to<S>(s), up = round_to<S>(kInt8 ? __fmul_rn(u, scale[N + n]) : u);
    store(y, at, __fmul_rn(round_to<S>(activation(act, g)), up));
  } else {
    const float sb = b ? __fadd_rn(s, load(b, n)) : s;
    store(y, at, E == kResidual ? __fadd_rn(load(r, at), round_to<S>(sb)) : sb);
  }
}

// LLM.int8's sum of a token against int8 weight row w [K]: its int8 row's sum `ints`
// times its scale, plus its outliers' products, those of the split's list (sx's row
// `side`, cuda_kernels.h) in the list's order.
__device__ inline float with_outliers(float ints, const float* __restrict__ side, const int8_t* __restrict__ w) {
  const int n = static_cast<int>(side[1]);
  float s = 0.f;
  for (int j = 0; j < n; ++j)
    s = __fadd_rn(s, __fmul_rn(side[2 + kSplitList + j], static_cast<float>(__ldg(w + static_cast<int>(side[2 + j])))));
  return __fadd_rn(__fmul_rn(side[0], ints), s);
}

// The sums of token t against row n (and the up row N + n, gated): acc, or for LLM.int8
// (sx set) with_outliers of them.
template <int E, typename W>
__device__ inline void token_sums(float* s, float* up, int t, int n, const W* __restrict__ w, int K, int N,
                                  const float* __restrict__ sx) {
  if constexpr (std::is_same_v<W, int8_t>) {
    if (!sx) return;
    const float* side = sx + static_cast<int64_t>(t) * kSplitRow;
    *s = with_outliers(*s, side, w + static_cast<int64_t>(n) * K);
    if (E == kGated) *up = with_outliers(*up, side, w + static_cast<int64_t>(N + n) * K);
  }
}

// U: loads a thread issues a round (kUnroll but where launch_one_wave picks more).
template <int T, int TPR, int E, typename S, typename W, int U = kUnroll>
__global__ void __launch_bounds__(kThreads)
    gemv_kernel(const S* __restrict__ x, const W* __restrict__ w, const float* __restrict__ scale,
                const S* __restrict__ b, const S* __restrict__ r, S* __restrict__ y, int K, int N, int act,
                const float* __restrict__ sx) {
  constexpr int kRows = kThreads / TPR;
  constexpr bool kInt8 = std::is_same_v<W, int8_t>;
  const int n = blockIdx.x * kRows + threadIdx.x / TPR, lane = threadIdx.x % TPR;
  const bool live = n < N;  // no early return: row_sums may synchronise the block
  const int vecs = K / kPerLoad<W>;
  const int4* row = reinterpret_cast<const int4*>(w + static_cast<int64_t>(live ? n : 0) * K);
  const int4* row2 = E == kGated ? row + static_cast<int64_t>(N) * vecs : row;  // the up row
  float acc[T], acc2[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = acc2[t] = 0.f;
  int4 wv[U], wv2[U];
  // The first loads are issued before the wait: the weights are no earlier kernel's output.
  const auto fetch = [&](int base) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
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
  for (int base = lane; live && base < vecs; base += TPR * U) {
    if (base != lane) fetch(base);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = base + u * TPR;
      if (v < vecs) {
        dot<T, S, W>(x, K, v, wv[u], acc);
        if (E == kGated) dot<T, S, W>(x, K, v, wv2[u], acc2);
      }
    }
  }
  row_sums<T, TPR, E == kGated ? 2 : 1>(acc, acc2);
  if (!live || lane != 0) return;
#pragma unroll
  for (int t = 0; t < T; ++t) {
    float s = acc[t], up = acc2[t];
    token_sums<E>(&s, &up, t, n, w, K, N, sx);
    finish<E, kInt8>(s, up, n, static_cast<int64_t>(t) * N + n, N, scale, b, r, y, act);
  }
}

// Threads per row: enough rows' loads in flight to cover HBM latency on every shape.
// From bench/gpu_gemv_bench on the H200 (docs/performance.md): one token of 16-bit
// weights reads fastest at 128 on every shape (gate_up 90% of HBM against 79% at 32);
// more tokens or int8 rows want fewer threads per row on the large shapes.
inline int threads_per_row(int N, int T, bool int8) {
  if (T == 1 && !int8) return 128;
  return N >= 8192 ? 32 : (N >= 4096 ? 64 : 128);
}

// Blocks of gemv_kernel<T, TPR, E, S, W, U> resident at once on the current device (its
// occupancy asked once per instantiation).
template <int T, int TPR, int E, typename S, typename W, int U>
int resident_blocks() {
  static const int per_multiprocessor = [] {
    int n = 0;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv_kernel<T, TPR, E, S, W, U>, kThreads, 0) ==
                   cudaSuccess
               ? n
               : 0;
  }();
  return per_multiprocessor * multiprocessors();
}

// The launch of tokens [t0, t0 + T) (LLM.int8: their sx rows too).
template <int T, int TPR, int E, typename S, typename W, int U = kUnroll>
cudaError_t launch_t(const GemvArgs& g, int t0, cudaStream_t stream) {
  constexpr int kRows = kThreads / TPR;
  const int64_t xo = static_cast<int64_t>(t0) * g.K, yo = static_cast<int64_t>(t0) * g.N;
  const S* r = static_cast<const S*>(g.r);
  const S* x = static_cast<const S*>(g.x);
  return launch_overlapped(gemv_kernel<T, TPR, E, S, W, U>, dim3((g.N + kRows - 1) / kRows), dim3(kThreads), stream,
                           x + xo, static_cast<const W*>(g.w), g.scale, static_cast<const S*>(g.b), r ? r + yo : r,
                           static_cast<S*>(g.y) + yo, g.K, g.N, g.act,
                           g.sx ? g.sx + static_cast<int64_t>(t0) * kSplitRow : g.sx);
}

// One token through a grid of one wave with every load of a row issued
// before the PDL wait: the most threads a row (128, 64, 32) for which the rows' blocks,
// at the fewest loads a thread that cover the row (4, 6 or 8), all fit the device at
// once. Then the whole weight is in flight while the kernel before runs, and no second
// wave starts its loads after the first ends. A small projection (the anchor's o_proj:
// 2,560 rows, 1,280 blocks at 128 threads a row against 1,056 resident) is otherwise a
// wave and a fifth. False where no such grid exists (then nothing is launched).
template <int E, typename S, typename W>
bool launch_one_wave(const GemvArgs& g, cudaStream_t stream, cudaError_t* e) {
  const int vecs = g.K / kPerLoad<W>;
  const auto fits = [&](auto tpr, auto u) {
    constexpr int kTpr = decltype(tpr)::value, kU = decltype(u)::value;
    const int blocks = (g.N + kThreads / kTpr - 1) / (kThreads / kTpr);
    if (vecs > kTpr * kU || blocks > resident_blocks<1, kTpr, E, S, W, kU>()) return false;
    *e = launch_t<1, kTpr, E, S, W, kU>(g, 0, stream);
    return true;
  };
  const auto with = [&](auto tpr) {
    using U4 = std::integral_constant<int, 4>;
    using U6 = std::integral_constant<int, 6>;
    using U8 = std::integral_constant<int, 8>;
    const int need = (vecs + decltype(tpr)::value - 1) / decltype(tpr)::value;
    return need <= 4 ? fits(tpr, U4{}) : need <= 6 ? fits(tpr, U6{}) : need <= 8 && fits(tpr, U8{});
  };
  return with(std::integral_constant<int, 128>{}) || with(std::integral_constant<int, 64>{}) ||
         with(std::integral_constant<int, 32>{});
}

// Every token in launches of at most kMaxTokens (each reads the weight once).
template <int E, typename S, typename W>
cudaError_t launch_gemv(const GemvArgs& g, cudaStream_t stream) {
  const int rows = g.T;
  cudaError_t one = cudaSuccess;
  if (rows == 1 && g.tpr == 0 && gemv_one_wave() && launch_one_wave<E, S, W>(g, stream, &one)) return one;
  const int tpr = g.tpr ? g.tpr : threads_per_row(E == kGated ? 2 * g.N : g.N, rows, g.int8);
  for (int t0 = 0; t0 < rows; t0 += kMaxTokens) {
    const int rest = rows - t0 < kMaxTokens ? rows - t0 : kMaxTokens;
    const cudaError_t e = for_tokens(rest, [&](auto t) {
      constexpr int kT = decltype(t)::value;
      if (tpr == 32) return launch_t<kT, 32, E, S, W>(g, t0, stream);
      if (tpr == 64) return launch_t<kT, 64, E, S, W>(g, t0, stream);
      return launch_t<kT, 128, E, S, W>(g, t0, stream);
    });
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace cascade::stage::cuda::gemv
