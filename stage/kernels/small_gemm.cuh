// The decode projections for a few to 64 tokens on the tensor cores (sm_80 and later),
// and `launch`, which picks between them and the GEMV (gemv.cuh) for a call. Included by
// fused_kernels.cu (16-bit weights) and int8_kernels.cu (int8 rows).
//
// Why: beyond a few tokens the GEMV's FMA loop re-reads x for every weight load (10-40%
// of HBM at 8-32 tokens), and cuBLAS leaves the residual add and the gated activation to
// separate kernels and has no int8-weight path (docs/performance.md). Which calls come
// here: tensor_core_from(), from the bench. Each weight row is read once for up to 64
// tokens, straight from HBM into registers in 16-byte loads (no shared-memory staging:
// the weight is read once, so there is nothing to reuse), and multiplied with mma.sync
// m16n8k16 (f32 sums).
//
// Layout. A block owns 16 output rows (for kGated also their 16 up rows) and its
// kMmaWarps warps split K in chunks of 4 loads: lane (g, c) = (lane / 4, lane % 4) loads
// 16 bytes of rows g and g + 8 at k = chunk + c * P (P weights a load) and the same k of
// token g's x. The mma's k order is a permutation of the chunk's (its contraction does
// not care), chosen so that one 16-byte load of a row is one thread's A fragments for
// P / 4 mma steps and one 16-byte load of x its B fragments: no shuffles. int8 weights
// are widened to S in registers (exact: |q| <= 128) and scaled per row in the epilogue.
// The warps' partial sums meet in shared memory, summed in warp order (the result does
// not depend on timing), and go through the GEMV's epilogue (gemv::finish).
//
// Split K. A projection with few rows has too few 16-row tiles to keep every
// multiprocessor's loads in flight: o_proj and down_proj of the anchor (2,560 rows) are
// 160 tiles on the H200's 132 multiprocessors, and read at 25-37% of HBM
// (docs/performance.md). There, a tile's chunks are split over gridDim.y blocks. Each
// writes its sums to a workspace; the last of a tile's blocks to finish (a ticket per
// tile) adds the splits' sums in split order (so the result does not depend on timing),
// runs the epilogue and returns the ticket to 0 for the next launch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "stage/kernels/gemv.cuh"

namespace cascade::stage::cuda::gemv {

// Warps a block: enough in flight on every shape (bench/gpu_gemv_bench: with 4, one token
// of q/k/v read at 54% of HBM against the GEMV's 79%).
constexpr int kMmaWarps = 8, kMmaMaxTokens = 64;

// Chunks in flight a warp: 32 (int8) or 64 (16-bit) bytes a row.
template <typename W>
constexpr int kMmaUnroll = std::is_same_v<W, int8_t> ? 2 : 4;

// The split-K workspace: sums [tile][split][kTiles][x rows][16 rows] and a ticket a tile,
// zero between launches. Each translation unit that includes this header has its own,
// one per device (a module's globals), so launches that split must not run on two
// streams of one device at once: a stage computes on one stream.
constexpr int kSplitMaxTiles = 4096, kSplitSums = 1 << 20, kMaxSplits = 8;
namespace {
__device__ float split_sums[kSplitSums];
__device__ unsigned split_tickets[kSplitMaxTiles];
}  // namespace

// d += a b for one m16n8k16 tile: a = 16 rows x 16 k (registers: rows g, g+8 of k pair c,
// then of k pair c + 4), b = 16 k x 8 tokens (k pairs c and c + 4 of token g).
template <typename S>
__device__ inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<S, __nv_bfloat16>)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched: tensor_core_from() is 0 below sm_80
#endif
}

template <typename S>
__device__ inline uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<S, __nv_bfloat16>) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// One 16-byte load of weights as pairs of S in 32-bit registers, in k order.
template <typename S, typename W>
__device__ inline void to_pairs(const int4& v, uint32_t (&p)[kPerLoad<W> / 2]) {
  if constexpr (std::is_same_v<W, int8_t>) {
    float f[16];
    unpack<W>(v, f);
#pragma unroll
    for (int j = 0; j < 8; ++j) p[j] = pack2<S>(f[2 * j], f[2 * j + 1]);
  } else {
    p[0] = static_cast<uint32_t>(v.x), p[1] = static_cast<uint32_t>(v.y);
    p[2] = static_cast<uint32_t>(v.z), p[3] = static_cast<uint32_t>(v.w);
  }
}

// y [T, N] for T <= 8 TG tokens: see the header. 16-bit S only; K % (4 kPerLoad<W>) == 0.
// With sx (LLM.int8: gemv.cuh), x is the int8 rows.
template <int TG, int E, typename S, typename W>
__global__ void __launch_bounds__(32 * kMmaWarps)
    mma_kernel(const S* __restrict__ x, const W* __restrict__ w, const float* __restrict__ scale,
               const S* __restrict__ b, const S* __restrict__ r, S* __restrict__ y, int T, int K, int N, int act,
               const float* __restrict__ sx) {
  constexpr int kTiles = E == kGated ? 2 : 1, kP = kPerLoad<W> / 2, kSteps = kP / 2;
  constexpr int kChunk = 4 * kPerLoad<W>, kXLoads = kPerLoad<W> / kPerLoad<S>;
  constexpr int kU = kMmaUnroll<W>;
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, c = threadIdx.x % 4;
  const int n0 = blockIdx.x * 16, chunks = K / kChunk, split = blockIdx.y, splits = gridDim.y;
  // This block's chunks: [lo, hi) of the tile's.
  const int lo = static_cast<int>(static_cast<int64_t>(chunks) * split / splits);
  const int hi = static_cast<int>(static_cast<int64_t>(chunks) * (split + 1) / splits);
  const int4* rows[kTiles][2];
#pragma unroll
  for (int i = 0; i < kTiles; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = n0 + g + 8 * h;  // rows past N read row n0 and are not stored
      rows[i][h] = reinterpret_cast<const int4*>(w + (static_cast<int64_t>(i) * N + (n < N ? n : n0)) * K) + c;
    }
  }
  float acc[kTiles][TG][4] = {};
  int4 wv[kU][kTiles][2];
  const auto fetch = [&](int first) {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int k = first + u * kMmaWarps;
      if (k < hi) {
#pragma unroll
        for (int i = 0; i < kTiles; ++i) {
#pragma unroll
          for (int h = 0; h < 2; ++h) wv[u][i][h] = __ldg(rows[i][h] + 4 * k);
        }
      }
    }
  };
  fetch(lo + warp);  // weights are no earlier kernel's output: read before the wait
  wait_for_prior_grid();
  allow_next_grid();
  for (int first = lo + warp; first < hi; first += kMmaWarps * kU) {
    if (first != lo + warp) fetch(first);
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int k = first + u * kMmaWarps;
      if (k >= hi) break;
      uint32_t a[kTiles][2][kP];
#pragma unroll
      for (int i = 0; i < kTiles; ++i) {
        to_pairs<S, W>(wv[u][i][0], a[i][0]);
        to_pairs<S, W>(wv[u][i][1], a[i][1]);
      }
#pragma unroll
      for (int tg = 0; tg < TG; ++tg) {
        const int tok = tg * 8 + g;
        uint32_t xb[kP];
        const int4* xp =
            reinterpret_cast<const int4*>(x + static_cast<int64_t>(tok) * K) + k * 4 * kXLoads + c * kXLoads;
#pragma unroll
        for (int l = 0; l < kXLoads; ++l) {
          const int4 v = tok < T ? __ldg(xp + l) : make_int4(0, 0, 0, 0);
          xb[4 * l] = v.x, xb[4 * l + 1] = v.y, xb[4 * l + 2] = v.z, xb[4 * l + 3] = v.w;
        }
#pragma unroll
        for (int s = 0; s < kSteps; ++s) {
#pragma unroll
          for (int i = 0; i < kTiles; ++i) {
            const uint32_t frag[4] = {a[i][0][2 * s], a[i][1][2 * s], a[i][0][2 * s + 1], a[i][1][2 * s + 1]};
            mma16816<S>(acc[i][tg], frag, xb[2 * s], xb[2 * s + 1]);
          }
        }
      }
    }
  }
  // The warps' sums meet in two rounds, so that shared memory holds half of them: the
  // upper half stores, the lower half adds its own. d fragments: d0, d1 = row g, tokens
  // 2c and 2c + 1 of the group; d2, d3 = row g + 8.
  constexpr int kHalf = kMmaWarps / 2;
  __shared__ float part[kHalf][kTiles][16][8 * TG];
  const auto each = [&](const auto& f) {
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
#pragma unroll
      for (int tg = 0; tg < TG; ++tg) {
#pragma unroll
        for (int j = 0; j < 4; ++j) f(part[warp % kHalf][i][g + 8 * (j / 2)][tg * 8 + 2 * c + j % 2], acc[i][tg][j]);
      }
    }
  };
  if (warp >= kHalf) each([](float& p, float a) { p = a; });
  __syncthreads();
  if (warp < kHalf) each([](float& p, float a) { p += a; });
  __syncthreads();
  const auto sum = [&](int tile, int row, int t) {
    float s = 0.f;
#pragma unroll
    for (int v = 0; v < kHalf; ++v) s += part[v][tile][row][t];
    return s;
  };
  const int64_t per_split = static_cast<int64_t>(kTiles) * T * 16;
  float* const sums = split_sums + static_cast<int64_t>(blockIdx.x) * splits * per_split;
  if (splits > 1) {
    for (int e = threadIdx.x; e < per_split; e += 32 * kMmaWarps)
      sums[split * per_split + e] = sum(e / (16 * T), e % 16, e / 16 % T);
    __threadfence();  // the sums are visible before the ticket is
    __syncthreads();
    __shared__ bool last;
    if (threadIdx.x == 0) last = atomicAdd(&split_tickets[blockIdx.x], 1u) == static_cast<unsigned>(splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
  }
  // Row `row`'s sum for x row t: this block's, or the splits' added in split order
  // (through L2: other multiprocessors wrote them).
  const auto total = [&](int tile, int row, int t) {
    if (splits == 1) return sum(tile, row, t);
    float s = 0.f;
    for (int v = 0; v < splits; ++v) s += __ldcg(sums + v * per_split + (tile * T + t) * 16 + row);
    return s;
  };
  if (splits > 1 && threadIdx.x == 0) split_tickets[blockIdx.x] = 0;  // the next launch waits for this one
  for (int e = threadIdx.x; e < 16 * T; e += 32 * kMmaWarps) {
    const int row = e % 16, t = e / 16, n = n0 + row;
    if (n >= N) continue;
    float s = total(0, row, t), up = E == kGated ? total(kTiles - 1, row, t) : 0.f;
    token_sums<E>(&s, &up, t, n, w, K, N, sx);
    finish<E, std::is_same_v<W, int8_t>>(s, up, n, static_cast<int64_t>(t) * N + n, N, scale, b, r, y, act);
  }
}

// The blocks a tile's K is split over. Only for at most kMaxTokens x rows, where tiles
// are few (fewer than two a multiprocessor: o_proj and down_proj of the anchor, 160 tiles
// on the H200's 132), and only so far as each split keeps two rounds of kMmaUnroll loads
// a warp: shorter blocks pay the sums' trip through the workspace and their start for
// too little. From bench/gpu_gemv_bench on the H200: split 3 ways, down_proj's 16-bit
// rows read 1.6x faster at 1-8 tokens (8 tokens: 24.4 -> 15.6 us) and its int8 rows
// 1.04-1.1x, but its int8 rows at 16 and 32 tokens 1.15x slower; split 2-4 ways, q/k/v,
// o_proj and gate/up (2 iterations a warp or fewer) read 3-25% slower.
// CASCADE_MMA_SPLIT=S asks for S wherever each split keeps one round a warp (1: never
// split), to measure. Within the workspace either way.
template <typename W>
int mma_splits(int N, int chunks, int rows, int tiles_a_row) {
  const int tiles = (N + 15) / 16, set = mma_split_setting();
  if (tiles > kSplitMaxTiles || (set == 0 && (rows > kMaxTokens || tiles >= 2 * multiprocessors()))) return 1;
  const int least = (set > 0 ? 1 : 2) * kMmaWarps * kMmaUnroll<W>;
  int splits = std::min(set > 0 ? set : kMaxSplits, std::max(1, chunks / least));
  while (splits > 1 && static_cast<int64_t>(tiles) * splits * tiles_a_row * rows * 16 > kSplitSums) --splits;
  return splits;
}

template <int E, typename S, typename W>
cudaError_t launch_mma(const GemvArgs& g, cudaStream_t stream) {
  for (int t0 = 0; t0 < g.T; t0 += kMmaMaxTokens) {
    const int rest = g.T - t0 < kMmaMaxTokens ? g.T - t0 : kMmaMaxTokens, groups = (rest + 7) / 8;
    const int64_t xo = static_cast<int64_t>(t0) * g.K, yo = static_cast<int64_t>(t0) * g.N;
    const S* r = static_cast<const S*>(g.r);
    const S* x = static_cast<const S*>(g.x);
    const int splits = mma_splits<W>(g.N, g.K / (4 * kPerLoad<W>), rest, E == kGated ? 2 : 1);
    const auto go = [&](auto kernel) {
      return launch_overlapped(kernel, dim3((g.N + 15) / 16, splits), dim3(32 * kMmaWarps), stream, x + xo,
                               static_cast<const W*>(g.w), g.scale, static_cast<const S*>(g.b), r ? r + yo : r,
                               static_cast<S*>(g.y) + yo, rest, g.K, g.N, g.act,
                               g.sx ? g.sx + static_cast<int64_t>(t0) * kSplitRow : g.sx);
    };
    const cudaError_t e = groups == 1   ? go(mma_kernel<1, E, S, W>)
                          : groups == 2 ? go(mma_kernel<2, E, S, W>)
                          : groups <= 4 ? go(mma_kernel<4, E, S, W>)
                                        : go(mma_kernel<8, E, S, W>);
    if (e != cudaSuccess) return e;
  }
  return cudaGetLastError();
}

// One call of the decode projection: the tensor-core kernel from tensor_core_from()
// tokens on where it applies (or where g.kernel asks for it), else the GEMV.
template <int E, typename S, typename W>
cudaError_t launch(const GemvArgs& g, cudaStream_t stream) {
  if constexpr (sizeof(S) == 2) {
    const bool applies = tensor_core_applies(g);  // its K is whole chunks: 4 kPerLoad<W>
    if (g.kernel == 2) return applies ? launch_mma<E, S, W>(g, stream) : cudaErrorInvalidValue;
    if (g.kernel == 0 && applies && g.T >= tensor_core_from(g.int8)) return launch_mma<E, S, W>(g, stream);
  } else if (g.kernel == 2) {
    return cudaErrorInvalidValue;
  }
  return launch_gemv<E, S, W>(g, stream);
}

// The int8 instantiations (int8_kernels.cu): float32 inputs take kPlain only.
cudaError_t launch_int8(int epilogue, const GemvArgs& g, cudaStream_t stream);

}  // namespace cascade::stage::cuda::gemv
