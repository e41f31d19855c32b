// The CPU GEMV kernels' instruction-set back ends (stage/kernels/cpu_gemv.h is the public
// side). Each back end is one translation unit built with its own -m flags
// (stage/CMakeLists.txt) from the one body in dot_block.h, and is called only after
// cpu_gemv.cpp has checked at run time that the CPU has those instructions.
#pragma once

#include <cstdint>

namespace cascade::stage::cpu {

enum class WeightType { kF32, kBF16, kF16, kI8 };
constexpr int kWeightTypes = 4;
constexpr int kBlockRows = 16;  // rows one dot_block call computes at most
constexpr int kMaxTokens = 16;  // tokens one call takes at most

// out[t * ldo + r] = sum_k x[t * ldx + k] * w[(row0 + r) * ldw + k] for r < rows,
// t < tokens; the weight's elements in `type`, everything else float32. No scale,
// bias or epilogue: the caller applies them to the float sums.
struct DotArgs {
  const float* x;  // [tokens, K], row stride ldx
  int64_t ldx;
  int tokens;     // 1 .. kMaxTokens
  const void* w;  // [rows, K] of `type` from its first row, row stride ldw elements
  int64_t ldw;
  int rows;  // 1 .. kBlockRows
  int64_t K;
  float* out;  // [tokens, ldo]
  int ldo;
  const uint16_t* xb = nullptr;  // for Backend::dot_bf16 instead of x: [tokens, K] bfloat16, row stride ldx
};
using DotBlock = void (*)(const DotArgs&);

// One function per weight type.
struct Backend {
  const char* name;
  // > 0: the bfloat16 kernel wants x with each block of 2 * pair_width elements
  // reordered, its even elements first, then its odd ones (a tail shorter than a block
  // stays as it is).
  int pair_width;
  // The sum of n floats at the rate the loads allow (the memory read bound).
  float (*read_sum)(const float* p, int64_t n);
  DotBlock dot[kWeightTypes];
  // bfloat16 weights against bfloat16 tokens (DotArgs::xb), pairs multiplied and summed
  // by the CPU's bfloat16 dot product; null where the back end has none. Each lane sums
  // the same elements as dot[kBF16]'s on the tokens widened to float32; the results
  // differ in the rounding of a pair's two additions and in subnormals (taken as zero).
  DotBlock dot_bf16 = nullptr;
};

const Backend& generic_backend();
const Backend& avx2_backend();        // AVX2 + FMA + F16C
const Backend& avx512_backend();      // AVX-512 F + BW
const Backend& avx512bf16_backend();  // AVX-512 F + BW + BF16

}  // namespace cascade::stage::cpu
