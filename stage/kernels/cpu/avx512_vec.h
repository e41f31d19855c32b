// The AVX-512 (F + BW) vector type of dot_block.h, shared by the back ends built with
// those flags and more (avx512.cpp, avx512bf16.cpp). Internal linkage, as dot_block.h.
#pragma once

#include <immintrin.h>

#include "stage/kernels/cpu/dot_block.h"

namespace cascade::stage::cpu {
namespace {

struct Avx512 {
  using reg = __m512;
  static constexpr int kRegs = 32;
  static constexpr int kWidth = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  template <WeightType WT>
  static reg load_w(const void* w, int64_t k) {
    if constexpr (WT == WeightType::kF32) return _mm512_loadu_ps(static_cast<const float*>(w) + k);
    const auto* p = static_cast<const char*>(w);
    if constexpr (WT == WeightType::kBF16) {  // bfloat16 is float32's top half
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * k));
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if constexpr (WT == WeightType::kF16)
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * k)));
    if constexpr (WT == WeightType::kI8)
      return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + k))));
  }
  static constexpr bool kPairs = true;
  static constexpr bool kBf16Dot = false;  // avx512bf16.cpp adds the dot product
  static void load_bf16_pairs(const uint16_t* w, reg* even, reg* odd) {
    const __m512i v = _mm512_loadu_si512(w);
    *even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    *odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace
}  // namespace cascade::stage::cpu
