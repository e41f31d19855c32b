// The float storage types of the CPU passes (cpu_gemv.cpp, cpu_rows.cpp) and their
// rounding: a float rounded to float32, bfloat16 or float16 to nearest even, as an ATen
// op's result is. Header-only.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

namespace cascade::stage::cpu {

inline bool float_type(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

// v as S (float, at::BFloat16 or at::Half), rounded to nearest even as S(v) is. The
// bfloat16 form has no branch, so that loops of it vectorize (c10's tests for NaN
// first): the same bits, any NaN giving c10's 0x7fc0.
template <typename S>
S to_storage(float v) {
  return S(v);
}
template <>
inline at::BFloat16 to_storage<at::BFloat16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return at::BFloat16(static_cast<uint16_t>(nan ? 0x7fc0u : rounded), at::BFloat16::from_bits());
}

// v rounded to S.
template <typename S>
float round_to(float v) {
  return static_cast<float>(to_storage<S>(v));
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
