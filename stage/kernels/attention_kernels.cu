// Decode attention that reads the KV cache where it lies ("flash decoding"): no gather
// of each sequence's keys, no mask tensor, no scatter through index_put. One block per
// (sequence, KV head, split of the key range); its warps take keys in turn, each lane
// holding D/32 elements of a row, with an online softmax in float32 for every query head
// of the GQA group. Splits write partial (max, sum, acc) and the last block of a
// (sequence, KV head) to finish merges them (a counter per pair, reset by that block),
// so a step is one launch whatever the split count. Raw pointers only (cuda_kernels.h).
//
// A warp's keys would be a chain: each waits for its load from HBM (the cache lines of
// earlier positions are long evicted by a step's weights). So each warp keeps up to
// kPrefetch keys in flight, and issues the first of them before it waits for the kernel
// before it (the projection that makes q): the cached keys are older than that kernel,
// and their latency then overlaps its tail (cuda_common.cuh, launch_overlapped). Blocks
// of 16 warps (where their shared memory fits: attention_shape.h) give a chat's
// spans few keys a warp in one split, with no merge through global memory; a batch's
// many (sequence, KV head) pairs take blocks of 4 (attention_shape.h).
// CASCADE_ATTENTION_PREFETCH=0 keeps one key in flight, issued after the wait: to measure.
#include <cfloat>

#include "config/env.h"
#include "stage/kernels/attention_shape.h"
#include "stage/kernels/cuda_common.cuh"

namespace cascade::stage::cuda {
namespace {

// n contiguous values of a row as float.
template <typename S, int N>
__device__ inline void load_row(const S* __restrict__ p, float (&out)[N]) {
  if constexpr (sizeof(S) * N % 16 == 0) {
#pragma unroll
    for (int c = 0; c < static_cast<int>(sizeof(S)) * N / 16; ++c) {
      const int4 v = __ldg(reinterpret_cast<const int4*>(p) + c);
      const S* e = reinterpret_cast<const S*>(&v);
#pragma unroll
      for (int i = 0; i < 16 / static_cast<int>(sizeof(S)); ++i) out[c * (16 / sizeof(S)) + i] = load(e, i);
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = load(p, i);
  }
}

// E contiguous elements of a row as they lie in memory, loaded in the widest pieces their
// size allows (4, 8 or 16 bytes), so that a warp can hold several keys' rows in flight
// in few registers and widen them when it uses them.
template <typename S, int E>
struct RawRow {
  static constexpr int kBytes = E * static_cast<int>(sizeof(S));
  static constexpr int kWords = kBytes / 4;
  static_assert(kBytes % 4 == 0, "a lane's part of a row is whole 32-bit words");
  unsigned w[kWords];

  __device__ inline void fetch(const S* __restrict__ p) {
    if constexpr (kWords % 4 == 0) {
#pragma unroll
      for (int c = 0; c < kWords / 4; ++c) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + c);
        w[4 * c] = v.x, w[4 * c + 1] = v.y, w[4 * c + 2] = v.z, w[4 * c + 3] = v.w;
      }
    } else if constexpr (kWords % 2 == 0) {
#pragma unroll
      for (int c = 0; c < kWords / 2; ++c) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + c);
        w[2 * c] = v.x, w[2 * c + 1] = v.y;
      }
    } else {
#pragma unroll
      for (int c = 0; c < kWords; ++c) w[c] = __ldg(reinterpret_cast<const unsigned*>(p) + c);
    }
  }
  __device__ inline void widen(float (&out)[E]) const {
    const S* e = reinterpret_cast<const S*>(w);
#pragma unroll
    for (int i = 0; i < E; ++i) out[i] = load(e, i);
  }
};

// Keys a warp keeps in flight: as many as 32 registers of a lane hold (key and value
// rows), 2 to 8.
constexpr int clamped(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
template <typename S, int E>
constexpr int kPrefetch = clamped(128 / (2 * RawRow<S, E>::kBytes), 2, 8);

// E contiguous elements [i0, i0 + E) of a head's row x rotated by RoPE (rotate-half) with
// the cos/sin rows, rounded as rope_row rounds them (so equal to its stored output).
template <typename S, int E>
__device__ inline void rope_part(const S* __restrict__ x, const S* __restrict__ cos, const S* __restrict__ sin, int i0,
                                 int D, float (&out)[E]) {
  const int half = D / 2;
  float xv[E], pv[E], cv[E], sv[E];
  load_row<S, E>(x + i0, xv);
  load_row<S, E>(x + (i0 < half ? i0 + half : i0 - half), pv);
  load_row<S, E>(cos + i0, cv);
  load_row<S, E>(sin + i0, sv);
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const float a = round_to<S>(__fmul_rn(xv[i], cv[i]));
    const float b = round_to<S>(__fmul_rn(i0 < half ? -pv[i] : pv[i], sv[i]));
    out[i] = round_to<S>(__fadd_rn(a, b));
  }
}

// With st.k set (and then st.q, st.cos, st.sin), the step's RoPE and KV store ride in
// this launch (decode_attention's `store`): q is read raw and rotated in registers, the
// block whose keys hold pos[b] writes the rotated key and the value into the cache, and
// the warp that attends position pos[b] takes them from the step's rows, not the cache
// (whose loads here go through the read-only path, which need not see this launch's
// writes).
template <typename S, int D, int G, int kAttnWarps>
__global__ void __launch_bounds__(kAttnWarps * 32)
    attention_kernel(DecodeAttention a, const S* __restrict__ q, const S* __restrict__ kc, const S* __restrict__ vc,
                     const int64_t* __restrict__ slots, const int64_t* __restrict__ pos, S* __restrict__ o,
                     float* __restrict__ work, int* __restrict__ counters, const DecodeStoreKv st, bool early) {
  constexpr int E = D / 32;  // elements per lane
  constexpr int P = kPrefetch<S, E>;
  const int b = blockIdx.x / a.kv_heads, h = blockIdx.x % a.kv_heads, split = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = a.heads / a.kv_heads;  // query heads h*group .. h*group + group - 1, group <= G
  // Slots, positions and the cache's earlier keys are older than the kernel before this
  // one, so they may be read before the wait (cuda_common.cuh); the key at p may not be:
  // that kernel may be the one that stored it.
  const int64_t slot = slots[b];
  const int p = static_cast<int>(pos[b]);
  const int lo = a.window > 0 ? max(0, p - a.window + 1) : 0;
  const int chunk = (a.span + a.splits - 1) / a.splits;
  const int begin = max(lo, split * chunk), end = min(p + 1, (split + 1) * chunk);
  const int64_t head = (slot * a.kv_heads + h) * a.max_seq;
  const int first = begin + warp, depth = early ? P : 1, step = depth * kAttnWarps;
  RawRow<S, E> kr[P], vr[P];  // the warp's keys j = first + i kAttnWarps (+ a multiple of step) in flight
  const auto issue = [&](int j, int i) {
    if (j < end && j != p) {
      kr[i].fetch(kc + (head + j) * D + lane * E);
      vr[i].fetch(vc + (head + j) * D + lane * E);
    }
  };
  const auto issue_first = [&] {
#pragma unroll
    for (int i = 0; i < P; ++i) {
      if (i < depth) issue(first + i * kAttnWarps, i);
    }
  };
  if (early) issue_first();
  wait_for_prior_grid();
  allow_next_grid();
  if (!early) issue_first();
  const S* cs = st.cos ? static_cast<const S*>(st.cos) + b * D : nullptr;  // RoPE's rows for this sequence
  const S* sn = st.cos ? static_cast<const S*>(st.sin) + b * D : nullptr;

  float qv[G][E], acc[G][E], m[G], l[G], slope[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.f;
    slope[g] = 0.f;
#pragma unroll
    for (int i = 0; i < E; ++i) acc[g][i] = 0.f;
    if (g < group) {
      const int hq = h * group + g;
      if (st.k)
        rope_part<S, E>(static_cast<const S*>(st.q) + b * st.q_row + hq * D, cs, sn, lane * E, D, qv[g]);
      else
        load_row<S, E>(q + (static_cast<int64_t>(b) * a.heads + hq) * D + lane * E, qv[g]);
      if (a.slopes) slope[g] = a.slopes[hq];
    }
  }
  const S* knew = st.k ? static_cast<const S*>(st.k) + b * st.k_row + h * D : nullptr;  // this step's key and value
  const S* vnew = st.k ? static_cast<const S*>(st.v) + b * st.v_row + h * D : nullptr;
  if (st.k && split == p / chunk) {  // the block whose keys hold p stores them
    S* kd = static_cast<S*>(st.k_cache) + (head + p) * D;
    S* vd = static_cast<S*>(st.v_cache) + (head + p) * D;
    rope_row(knew, cs, sn, kd, D);
    for (int i = threadIdx.x; i < D; i += blockDim.x) vd[i] = vnew[i];
  }
  // Key j's rows as floats: from the ring, or for j == p from the step's rows (or, when
  // an earlier kernel stored them, from the cache, now that it has finished).
  const auto take = [&](int j, int i, float(&kv)[E], float(&vv)[E]) {
    if (j != p) {
      kr[i].widen(kv);
      vr[i].widen(vv);
    } else if (knew) {
      rope_part<S, E>(knew, cs, sn, lane * E, D, kv);
      load_row<S, E>(vnew + lane * E, vv);
    } else {
      load_row<S, E>(kc + (head + j) * D + lane * E, kv);
      load_row<S, E>(vc + (head + j) * D + lane * E, vv);
    }
  };
  for (int j0 = first; j0 < end; j0 += step) {
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int j = j0 + i * kAttnWarps;
      if (i >= depth || j >= end) break;
      float kv[E], vv[E];
      take(j, i, kv, vv);
      issue(j + step, i);  // the slot's next key, in flight while this one is used
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (g >= group) break;
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < E; ++k) s = __fmaf_rn(qv[g][k], kv[k], s);
        s = warp_sum(s) * a.scale;
        if (a.softcap > 0.f) s = a.softcap * tanhf(s / a.softcap);
        s += slope[g] * static_cast<float>(j);
        const float mn = fmaxf(m[g], s), corr = expf(m[g] - mn), e = expf(s - mn);
        m[g] = mn;
        l[g] = l[g] * corr + e;
#pragma unroll
        for (int d = 0; d < E; ++d) acc[g][d] = __fmaf_rn(e, vv[d], acc[g][d] * corr);
      }
    }
  }

  // Merge the warps: (m, l, acc) per warp and query head through shared memory.
  __shared__ float sm_m[kAttnWarps][G], sm_l[kAttnWarps][G], sm_acc[kAttnWarps][G][D];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      sm_m[warp][g] = m[g];
      sm_l[warp][g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < E; ++i) sm_acc[warp][g][lane * E + i] = acc[g][i];
  }
  __syncthreads();
  const int n_out = a.splits * a.heads * D;  // floats of one sequence's partial accs
  float* part_acc = work + static_cast<int64_t>(b) * n_out;
  float* part_ml = work + static_cast<int64_t>(a.B) * n_out + static_cast<int64_t>(b) * a.splits * a.heads * 2;
  for (int idx = threadIdx.x; idx < group * D; idx += blockDim.x) {
    const int g = idx / D, d = idx % D, hq = h * group + g;
    float mx = -FLT_MAX;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) mx = fmaxf(mx, sm_m[w][g]);
    float sum = 0.f, val = 0.f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) {
      const float f = sm_l[w][g] > 0.f ? expf(sm_m[w][g] - mx) : 0.f;
      sum += sm_l[w][g] * f;
      val += sm_acc[w][g][d] * f;
    }
    if (a.splits == 1) {
      store(o, (static_cast<int64_t>(b) * a.heads + hq) * D + d, val / sum);
    } else {
      part_acc[(static_cast<int64_t>(split) * a.heads + hq) * D + d] = val;
      if (d == 0) {
        part_ml[(split * a.heads + hq) * 2] = mx;
        part_ml[(split * a.heads + hq) * 2 + 1] = sum;
      }
    }
  }
  if (a.splits == 1) return;

  // The last split block of this (sequence, KV head) to finish merges the splits.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int done = atomicAdd(&counters[blockIdx.x], 1);
    last = done == a.splits - 1;
    if (last) counters[blockIdx.x] = 0;  // ready for the next launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int idx = threadIdx.x; idx < group * D; idx += blockDim.x) {
    const int g = idx / D, d = idx % D, hq = h * group + g;
    float mx = -FLT_MAX;
    for (int s = 0; s < a.splits; ++s) {
      if (__ldcg(&part_ml[(s * a.heads + hq) * 2 + 1]) > 0.f) mx = fmaxf(mx, __ldcg(&part_ml[(s * a.heads + hq) * 2]));
    }
    float sum = 0.f, val = 0.f;
    for (int s = 0; s < a.splits; ++s) {
      const float ls = __ldcg(&part_ml[(s * a.heads + hq) * 2 + 1]);
      if (ls <= 0.f) continue;
      const float f = expf(__ldcg(&part_ml[(s * a.heads + hq) * 2]) - mx);
      sum += ls * f;
      val += __ldcg(&part_acc[(static_cast<int64_t>(s) * a.heads + hq) * D + d]) * f;
    }
    store(o, (static_cast<int64_t>(b) * a.heads + hq) * D + d, val / sum);
  }
}

template <typename S, int D, int G>
void attention_t(const DecodeAttention& a, const void* q, const void* kc, const void* vc, const int64_t* slots,
                 const int64_t* pos, void* o, float* work, int* counters, const DecodeStoreKv& st,
                 cudaStream_t stream) {
  const auto go = [&](auto kernel, int warps) {
    launch_overlapped(kernel, dim3(a.B * a.kv_heads, a.splits), dim3(warps * 32), stream, a, static_cast<const S*>(q),
                      static_cast<const S*>(kc), static_cast<const S*>(vc), slots, pos, static_cast<S*>(o), work,
                      counters, st, attention_prefetch());
  };
  if constexpr (G * D <= kWideAttentionElems) {
    if (a.warps == 16) return go(attention_kernel<S, D, G, 16>, 16);
  }
  go(attention_kernel<S, D, G, 4>, 4);
}

template <typename S, int D>
cudaError_t attention_g(const DecodeAttention& a, const void* q, const void* kc, const void* vc, const int64_t* slots,
                        const int64_t* pos, void* o, float* work, int* counters, const DecodeStoreKv& st,
                        cudaStream_t stream) {
  const int group = a.heads / a.kv_heads;
  if (a.warps != attention_wide_warps(group, D) && a.warps != 4) return cudaErrorInvalidValue;
  if (group == 1)
    attention_t<S, D, 1>(a, q, kc, vc, slots, pos, o, work, counters, st, stream);
  else if (group == 2)
    attention_t<S, D, 2>(a, q, kc, vc, slots, pos, o, work, counters, st, stream);
  else if (group <= 4)
    attention_t<S, D, 4>(a, q, kc, vc, slots, pos, o, work, counters, st, stream);
  else if (group <= 8)
    attention_t<S, D, 8>(a, q, kc, vc, slots, pos, o, work, counters, st, stream);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

template <typename S>
cudaError_t attention_d(const DecodeAttention& a, const void* q, const void* kc, const void* vc, const int64_t* slots,
                        const int64_t* pos, void* o, float* work, int* counters, const DecodeStoreKv& st,
                        cudaStream_t stream) {
  switch (a.D) {
    case 64:
      return attention_g<S, 64>(a, q, kc, vc, slots, pos, o, work, counters, st, stream);
    case 128:
      return attention_g<S, 128>(a, q, kc, vc, slots, pos, o, work, counters, st, stream);
    case 256:
      return attention_g<S, 256>(a, q, kc, vc, slots, pos, o, work, counters, st, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// Blocks [0, q_blocks) rotate one (sequence, query head) row of q into q_out; each
// later block writes one (sequence, KV head)'s key (rotated when cos) and value into
// the cache at (slots[b], head, pos[b]).
template <typename S>
__global__ void store_kv_kernel(const cuda::DecodeStoreKv a, int q_blocks) {
  const S* cos = static_cast<const S*>(a.cos);
  const S* sin = static_cast<const S*>(a.sin);
  wait_for_prior_grid();
  allow_next_grid();
  if (static_cast<int>(blockIdx.x) < q_blocks) {
    const int64_t b = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
    rope_row(static_cast<const S*>(a.q) + b * a.q_row + h * a.D, cos + b * a.D, sin + b * a.D,
             static_cast<S*>(a.q_out) + static_cast<int64_t>(blockIdx.x) * a.D, a.D);
    return;
  }
  const int64_t blk = blockIdx.x - q_blocks, b = blk / a.kv_heads, h = blk % a.kv_heads;
  const int64_t dst = ((a.slots[b] * a.kv_heads + h) * a.max_seq + a.pos[b]) * a.D;
  const S* k = static_cast<const S*>(a.k) + b * a.k_row + h * a.D;
  const S* v = static_cast<const S*>(a.v) + b * a.v_row + h * a.D;
  S* kc = static_cast<S*>(a.k_cache) + dst;
  S* vc = static_cast<S*>(a.v_cache) + dst;
  if (cos) {
    rope_row(k, cos + b * a.D, sin + b * a.D, kc, a.D);
  } else {
    for (int i = threadIdx.x; i < a.D; i += blockDim.x) kc[i] = k[i];
  }
  for (int i = threadIdx.x; i < a.D; i += blockDim.x) vc[i] = v[i];
}

template <typename S>
cudaError_t store_kv_as(const cuda::DecodeStoreKv& a, cudaStream_t stream) {
  const int threads = a.D < 256 ? a.D : 256;
  const int q_blocks = a.q ? a.B * a.heads : 0;
  return launch_overlapped(store_kv_kernel<S>, dim3(q_blocks + a.B * a.kv_heads), dim3(threads), stream, a, q_blocks);
}

}  // namespace

bool attention_prefetch() {
  static const bool early = config::env_flag("CASCADE_ATTENTION_PREFETCH", true);
  return early;
}

cudaError_t decode_attention(const DecodeAttention& a, const void* q, const void* k_cache, const void* v_cache,
                             const int64_t* slots, const int64_t* pos, void* o, float* work, int* counters,
                             cudaStream_t stream, const DecodeStoreKv* store) {
  if (a.B <= 0) return cudaSuccess;
  const DecodeStoreKv st = store ? *store : DecodeStoreKv{};
  if (store && (!st.k || !st.v || !st.q || !st.cos || !st.sin || st.B != a.B || st.kv_heads != a.kv_heads ||
                st.D != a.D || st.k_cache != k_cache || st.v_cache != v_cache))
    return cudaErrorInvalidValue;
  switch (a.dtype) {
    case 0:
      return attention_d<float>(a, q, k_cache, v_cache, slots, pos, o, work, counters, st, stream);
    case 1:
      return attention_d<__half>(a, q, k_cache, v_cache, slots, pos, o, work, counters, st, stream);
    case 2:
      return attention_d<__nv_bfloat16>(a, q, k_cache, v_cache, slots, pos, o, work, counters, st, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t decode_store_kv(const DecodeStoreKv& a, cudaStream_t stream) {
  if (a.B <= 0) return cudaSuccess;
  if ((a.q && !a.cos) || (a.q && (!a.q_out || a.heads <= 0))) return cudaErrorInvalidValue;
  switch (a.dtype) {
    case 0:
      return store_kv_as<float>(a, stream);
    case 1:
      return store_kv_as<__half>(a, stream);
    case 2:
      return store_kv_as<__nv_bfloat16>(a, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cascade::stage::cuda
