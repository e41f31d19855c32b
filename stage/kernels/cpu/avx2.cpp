// The AVX2 + FMA + F16C back end (isa.h); built with those -m flags only.
#include <immintrin.h>

#include "stage/kernels/cpu/dot_block.h"

namespace cascade::stage::cpu {
namespace {

struct Avx2 {
  using reg = __m256;
  static constexpr int kRegs = 16;
  static constexpr int kWidth = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  template <WeightType WT>
  static reg load_w(const void* w, int64_t k) {
    if constexpr (WT == WeightType::kF32) return _mm256_loadu_ps(static_cast<const float*>(w) + k);
    const auto* p = static_cast<const char*>(w);
    if constexpr (WT == WeightType::kBF16) {  // bfloat16 is float32's top half
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * k));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if constexpr (WT == WeightType::kF16)
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * k)));
    if constexpr (WT == WeightType::kI8)
      return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + k))));
  }
  static constexpr bool kPairs = true;
  static constexpr bool kBf16Dot = false;
  static void load_bf16_pairs(const uint16_t* w, reg* even, reg* odd) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static float sum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace

const Backend& avx2_backend() {
  static const Backend b = make_backend<Avx2>("avx2");
  return b;
}

}  // namespace cascade::stage::cpu
