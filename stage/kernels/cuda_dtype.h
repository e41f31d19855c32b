// The ATen side of cuda_kernels.h's dtype codes, for the wrappers that check shapes and
// call the launchers (fused_kernels.cpp, int8_kernels.cpp, attention_kernels.cpp).
#pragma once

#include <ATen/ATen.h>

namespace cascade::stage {

// 0 float32, 1 float16, 2 bfloat16; -1 for any other type.
inline int cuda_dtype_code(at::ScalarType t) {
  return t == at::kFloat ? 0 : (t == at::kHalf ? 1 : (t == at::kBFloat16 ? 2 : -1));
}

}  // namespace cascade::stage
