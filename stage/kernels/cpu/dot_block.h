// The body of every back end's dot_block (isa.h), written once over a vector type V
// that each back end's file supplies:
//   V::reg; V::kWidth floats per reg; V::zero(); V::fma(a, b, c) = a * b + c;
//   V::load(const float*); V::template load_w<WeightType>(const void*, int64_t k) (kWidth
//   weights from element k, widened to float); V::sum(reg); V::kPairs and
//   V::load_bf16_pairs (bfloat16 weights split into even and odd elements); V::kBf16Dot,
//   and where it is true V::breg, V::load_bh(const uint16_t*) and V::dot_bf16(acc, w, x).
// Everything here has internal linkage: each back end compiles it with its own -m
// flags, and no copy may stand in for another's at link time.
#pragma once

#include <cstdint>
#include <cstring>

#include "stage/kernels/cpu/isa.h"

namespace cascade::stage::cpu {
namespace {

template <WeightType>
struct ElemOf;
template <>
struct ElemOf<WeightType::kF32> {
  using type = float;
};
template <>
struct ElemOf<WeightType::kBF16> {
  using type = uint16_t;
};
template <>
struct ElemOf<WeightType::kF16> {
  using type = uint16_t;
};
template <>
struct ElemOf<WeightType::kI8> {
  using type = int8_t;
};

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// IEEE binary16 -> float32, subnormals, infinities and NaNs included.
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
  const float sub = static_cast<float>(man) * (1.0f / 16777216.0f);  // man * 2^-24
  return sign ? -sub : sub;
}

template <WeightType WT>
float widen(const typename ElemOf<WT>::type* w, int64_t k) {
  if constexpr (WT == WeightType::kBF16) return bits_to_float(static_cast<uint32_t>(w[k]) << 16);
  if constexpr (WT == WeightType::kF16) return half_to_float(w[k]);
  return static_cast<float>(w[k]);
}

// Asks for the cache line at `addr` (an integer: it may lie past the weights) into L2
// and outward, not into L1 (locality 2, PREFETCHT1 on x86). One thread, bfloat16 GEMV on
// an Intel Xeon (Emerald Rapids) VM, 2026-12-07, % of the read bound: [4096, 768] 47-58%
// with PREFETCHNTA (what this was) -> 82-100%; [6912, 2560] 40-45% -> 94-102%; int8 rows
// 34-55% -> 65-87%. PREFETCHT2 did as well, PREFETCHT0 a little worse. Likely why, not
// counted: NTA brings the line close to the core only, so one evicted before its tile
// reaches it (8 rows of 5 KB against a 48 KB L1) is read from memory again.
inline void prefetch_weights(uintptr_t addr) { __builtin_prefetch(reinterpret_cast<const void*>(addr), 0, 2); }

// A tile's R x G float sums, in registers, set to zero.
template <class V, int R, int G>
void zero_sums(typename V::reg (&acc)[R][G]) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) acc[r][g] = V::zero();
}

// Each sum's lanes added, then the elements past the last whole register
// (term(r, g, k) for k in [full, K)) one by one, into a.out: the same order whatever
// the tile's shape.
template <class V, int R, int G, class Term>
void finish_sums(const DotArgs& a, int r0, int t0, typename V::reg (&acc)[R][G], int64_t full, const Term& term) {
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) {
      float s = V::sum(acc[r][g]);
      for (int64_t k = full; k < a.K; ++k) s += term(r, g, k);
      a.out[(t0 + g) * a.ldo + r0 + r] = s;
    }
}

// bfloat16 rows where V reads them in pairs (isa.h, Backend::pair_width): a register of
// 2 * kWidth weights splits into the even elements and the odd ones with a shift and a
// mask, no widening shuffle; x comes with each 2 * kWidth block's even elements first.
template <class V, int R, int G>
void dot_tile_pairs(const DotArgs& a, int r0, int t0) {
  const uint16_t* w = static_cast<const uint16_t*>(a.w) + r0 * a.ldw;
  const float* x = a.x + t0 * a.ldx;
  constexpr int kStep = 2 * V::kWidth;
  typename V::reg acc[R][G];
  zero_sums<V>(acc);
  const int64_t K = a.K, full = K - K % kStep;
  // The next tile's rows at this k, a cache line (32 weights) at a time: rows of a few
  // KB are short streams that the hardware prefetchers pick up late (one thread, K = 768,
  // cpu_gemv_bench on an AMD Zen 5 VM, 2026-12-06: AVX2 42-57% -> 74-91% of the read
  // bound, AVX-512 pairs 47-66% -> 70-89%), into L2 (prefetch_weights says why).
  // A prefetch is a hint: no fault, no result.
  // Past the block's last row the address may lie outside the weights: formed as an
  // integer (no pointer past its object), and a prefetch of it neither faults nor reads.
  const uintptr_t row_bytes = 2 * a.ldw, next = reinterpret_cast<uintptr_t>(w) + R * row_bytes;
  for (int64_t k = 0; k < full; k += kStep) {
    typename V::reg xe[G], xo[G];
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      xe[g] = V::load(x + g * a.ldx + k);
      xo[g] = V::load(x + g * a.ldx + k + V::kWidth);
    }
    if (k % 32 == 0) {
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) prefetch_weights(next + r * row_bytes + 2 * k);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      typename V::reg we, wo;
      V::load_bf16_pairs(w + r * a.ldw + k, &we, &wo);
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) acc[r][g] = V::fma(wo, xo[g], V::fma(we, xe[g], acc[r][g]));
    }
  }
  finish_sums<V>(a, r0, t0, acc, full, [&](int r, int g, int64_t k) {
    return widen<WeightType::kBF16>(w + r * a.ldw, k) * x[g * a.ldx + k];
  });
}

// bfloat16 rows against bfloat16 tokens (a.xb) where V has a bfloat16 dot product
// (V::kBf16Dot): a register of 2 * kWidth weights against as many inputs, each lane
// summing its pair's two products into its float sum, as dot_tile_pairs' lanes do.
template <class V, int R, int G>
void dot_tile_bf16(const DotArgs& a, int r0, int t0) {
  const uint16_t* w = static_cast<const uint16_t*>(a.w) + r0 * a.ldw;
  const uint16_t* x = a.xb + t0 * a.ldx;
  constexpr int kStep = 2 * V::kWidth;
  typename V::reg acc[R][G];
  zero_sums<V>(acc);
  const int64_t K = a.K, full = K - K % kStep;
  const uintptr_t row_bytes = 2 * a.ldw, next = reinterpret_cast<uintptr_t>(w) + R * row_bytes;
  for (int64_t k = 0; k < full; k += kStep) {
    typename V::breg xv[G];
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) xv[g] = V::load_bh(x + g * a.ldx + k);
    if (k % 32 == 0) {  // the next tile's rows, as dot_tile_pairs does
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) prefetch_weights(next + r * row_bytes + 2 * k);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const typename V::breg wv = V::load_bh(w + r * a.ldw + k);
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) acc[r][g] = V::dot_bf16(acc[r][g], wv, xv[g]);
    }
  }
  finish_sums<V>(a, r0, t0, acc, full, [&](int r, int g, int64_t k) {
    return widen<WeightType::kBF16>(w + r * a.ldw, k) * widen<WeightType::kBF16>(x + g * a.ldx, k);
  });
}

// R weight rows from row r0 against G tokens from token t0, the sums in registers.
// X16: the tokens are bfloat16 (a.xb) and so are the weights (Backend::dot_bf16).
template <class V, WeightType WT, int R, int G, bool X16>
void dot_tile(const DotArgs& a, int r0, int t0) {
  if constexpr (X16) return dot_tile_bf16<V, R, G>(a, r0, t0);
  if constexpr (WT == WeightType::kBF16 && V::kPairs) return dot_tile_pairs<V, R, G>(a, r0, t0);
  using E = typename ElemOf<WT>::type;
  const E* w = static_cast<const E*>(a.w) + r0 * a.ldw;
  const float* x = a.x + t0 * a.ldx;
  typename V::reg acc[R][G];
  zero_sums<V>(acc);
  const int64_t K = a.K, full = K - K % V::kWidth;
  constexpr int64_t kLine = 64 / sizeof(E);  // elements a cache line
  const uintptr_t row_bytes = sizeof(E) * a.ldw, next = reinterpret_cast<uintptr_t>(w) + R * row_bytes;
  for (int64_t k = 0; k < full; k += V::kWidth) {
    typename V::reg xv[G];
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) xv[g] = V::load(x + g * a.ldx + k);
    // The next tile's rows, as dot_tile_pairs does, for 16- and 8-bit rows (float16 and
    // int8 GEMVs at K = 768: ~65 -> 85-96% and 35-40 -> 57-60% of the read bound on AVX2;
    // float32 rows, twice as long, gained nothing in the bench).
    if (sizeof(E) < 4 && k % kLine == 0) {
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) prefetch_weights(next + r * row_bytes + sizeof(E) * k);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const typename V::reg wv = V::template load_w<WT>(w + r * a.ldw, k);
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) acc[r][g] = V::fma(wv, xv[g], acc[r][g]);
    }
  }
  finish_sums<V>(a, r0, t0, acc, full,
                 [&](int r, int g, int64_t k) { return widen<WT>(w + r * a.ldw, k) * x[g * a.ldx + k]; });
}

// Every row of the block against G tokens: R rows at a time, then one at a time.
template <class V, WeightType WT, int R, int G, bool X16>
void rows(const DotArgs& a, int t0) {
  int r = 0;
  for (; r + R <= a.rows; r += R) dot_tile<V, WT, R, G, X16>(a, r, t0);
  for (; r < a.rows; ++r) dot_tile<V, WT, 1, G, X16>(a, r, t0);
}

// Tokens in groups of up to four, the tile shapes chosen to fit the vector registers
// (R * G sums + G inputs + a weight): 16 for AVX2, 32 for AVX-512 (V::kRegs).
// One token takes 8 rows at a time on every back end (8 sums, 2 inputs and the weights
// fit 16 registers), two tokens where there are 32 registers: 8 row streams in flight
// read faster than 4 on the development VM (AMD Zen 5, one thread, cpu_gemv_bench;
// AVX-512, 2026-12-04: float32 and bfloat16 12-35%, int8 ~15%; AVX2, 2026-12-06: float32
// 75% -> 89% of the read bound, bfloat16 52% -> 59%; docs/performance.md). A row's sum
// is the same whatever R (its own register, the same k order).
template <class V, WeightType WT, bool X16 = false>
void dot_block(const DotArgs& a) {
  constexpr bool kWide = V::kRegs >= 32;  // room for 8 rows of two tokens
  for (int t = 0; t < a.tokens;) {
    const int left = a.tokens - t;
    switch (left >= 4 ? 4 : left) {
      case 1:
        rows<V, WT, 8, 1, X16>(a, t);
        t += 1;
        break;
      case 2:
        rows<V, WT, kWide ? 8 : 4, 2, X16>(a, t);
        t += 2;
        break;
      case 3:
        rows<V, WT, V::kRegs >= 32 ? 4 : 2, 3, X16>(a, t);
        t += 3;
        break;
      default:
        rows<V, WT, V::kRegs >= 32 ? 4 : 2, 4, X16>(a, t);
        t += 4;
        break;
    }
  }
}

// The sum of squares of n floats, with enough sums in flight that the loads, not the
// arithmetic, set the pace: the read half of a STREAM-like bound.
template <class V>
float read_sum(const float* p, int64_t n) {
  typename V::reg acc[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) acc[i] = V::zero();
  constexpr int64_t kStep = 8 * V::kWidth;
  int64_t k = 0;
  for (; k + kStep <= n; k += kStep)
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const typename V::reg v = V::load(p + k + i * V::kWidth);
      acc[i] = V::fma(v, v, acc[i]);
    }
  float s = 0;
  for (int i = 0; i < 8; ++i) s += V::sum(acc[i]);
  for (; k < n; ++k) s += p[k] * p[k];
  return s;
}

template <class V>
Backend make_backend(const char* name) {
  Backend b{name,
            V::kPairs ? V::kWidth : 0,
            &read_sum<V>,
            {&dot_block<V, WeightType::kF32>, &dot_block<V, WeightType::kBF16>, &dot_block<V, WeightType::kF16>,
             &dot_block<V, WeightType::kI8>}};
  if constexpr (V::kBf16Dot) b.dot_bf16 = &dot_block<V, WeightType::kBF16, true>;
  return b;
}

}  // namespace
}  // namespace cascade::stage::cpu
