// LLM.int8 (Dettmers et al., 2022), as bitsandbytes integrates it: linear weights
// stored as int8 with one absmax scale per output row; at run time the activation
// columns holding an outlier (|x| >= threshold, 6.0 by default) are multiplied in
// floating point against those weight columns dequantized, and the rest as
// int8 x int8 -> int32 with a scale per activation row and per weight row.
// threshold = 0 is the weight-only path: dequantize, then an ordinary matmul.
//
// The int32 accumulation is done exactly (in float64, whose 53-bit mantissa holds any
// int8 x int8 sum below 2^39 terms) so the CPU path is correct everywhere; it is not
// the fast path. Plain functions; no state.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "stage/family.h"

namespace cascade::stage {

// What LLM.int8 quantizes, in one place for the loader and the planner: the 2-D
// projection weights ("…_proj.weight") of decoder layers whose module name contains no
// entry of `skip` (quantization.skip_modules).
bool int8_module(const ModuleSpec& spec, const std::vector<std::string>& skip);
bool int8_tensor(const std::string& name, size_t rank);

struct Int8Rows {
  at::Tensor q;      // [out, in] int8
  at::Tensor scale;  // [out] float32: row absmax / 127
};

// w: [out, in], any float dtype and device.
Int8Rows quantize_rows(const at::Tensor& w);
at::Tensor dequantize(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype);  // [out, in]

// x: [tokens, in]; bias: [out] or undefined. Returns [tokens, out] in x's dtype.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, const at::Tensor& bias,
                       double threshold);

}  // namespace cascade::stage
