// The float storage types of the CPU passes (cpu_gemv.cpp, cpu_rows.cpp) and their
// rounding: a float rounded to float32, bfloat16 or float16 to nearest even, as an ATen
// op's result is. Header-only.
#pragma once

#include <ATen/ATen.h>

namespace cascade::stage::cpu {

inline bool float_type(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

// v rounded to S (float, at::BFloat16 or at::Half).
template <typename S>
float round_to(float v) {
  return static_cast<float>(S(v));
}

// f(S{}) for S the storage type of `type` (bfloat16, float16, else float32).
template <class F>
void for_type(at::ScalarType type, const F& f) {
  if (type == at::kBFloat16)
    f(at::BFloat16{});
  else if (type == at::kHalf)
    f(at::Half{});
  else
    f(float{});
}

}  // namespace cascade::stage::cpu
