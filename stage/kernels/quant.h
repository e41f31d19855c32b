// LLM.int8 (Dettmers et al., 2022), as bitsandbytes integrates it: linear weights
// stored as int8 with one absmax scale per output row; at run time the activations'
// outliers (|x| >= threshold, 6.0 by default) are multiplied in floating point against
// their weight columns dequantized, and the rest as int8 x int8 -> int32 with a scale per
// activation row and per weight row. threshold = 0 is the weight-only path: the int8
// weight times x, then the row scales.
//
// Departures from bitsandbytes:
// - Outliers are a token's own: its values over the threshold. bitsandbytes takes a
//   whole column out of the int8 part for every token of the batch when one token has an
//   outlier there, so a token's result depends on its batch: on who else a continuous
//   batch holds, and on the pad rows of a CUDA graph's batch bucket.
// - At most kMaxOutlierColumns a token, its largest (bitsandbytes takes all, which needs
//   their count on the host); any beyond stay in the int8 part, quantized with their
//   row. So a step needs no device-to-host sync and can be captured in a CUDA graph.
//   Of values tied at the last one taken, the lowest columns (GPU and CPU alike).
// - The int8 sums are exact: cuBLASLt's int8 GEMM on CUDA (LibTorch >= 2.1), float32
//   products in blocks of 1024 (exact below 2^24) on the CPU; the decode kernels' float32
//   sums of integers (stage/kernels/int8_kernels.h) are exact while a sum stays below
//   2^24 (127 * 127 * 1040).
// Plain functions; no state.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "stage/family.h"

namespace cascade::stage {

constexpr int64_t kMaxOutlierColumns = 16;

// Whether LLM.int8 quantizes `spec`: its family declares weights it may quantize
// (ModuleSpec::int8), and its name contains no entry of `skip` (quantization.skip_modules).
bool int8_module(const ModuleSpec& spec, const std::vector<std::string>& skip);

// Bytes an int8 tensor holds: one byte per weight plus a float scale per output row.
uint64_t int8_bytes(const std::vector<int64_t>& shape, Int8Layout layout);

struct Int8Rows {
  at::Tensor q;      // [out, in] int8, contiguous
  at::Tensor scale;  // [out] float32: row absmax / 127
};

// w: [out, in] (kRows) or [in, out] (kTransposed), any float dtype and device.
Int8Rows quantize_rows(const at::Tensor& w, Int8Layout layout = Int8Layout::kRows);
at::Tensor dequantize(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype);  // [out, in]

// An activation split once for every projection that reads it (q/k/v share one,
// gate/up another), so the split costs its kernels once.
// On a GPU, where the split kernel takes x (stage/kernels/int8_kernels.h: up to
// kInt8SplitMaxTokens tokens), the result is `ints` (the decode kernels' form) and sx;
// elsewhere ATen's split, in sx, xq, cols and xo.
struct Int8Activation {
  at::Tensor x;          // [tokens, in] as given
  double threshold = 0;  // <= 0: weight-only, nothing below is set
  at::Tensor sx;         // [tokens, 1] float32 row scales of the int8 part (with ints: column 0
                         // of [tokens, kInt8SplitRow], stage/kernels/int8_kernels.h)
  at::Tensor ints;       // [tokens, in] in x's dtype (int8_kernels.h), or undefined
  at::Tensor xq;         // [tokens, in] int8, each token's outliers zeroed (ATen's split)
  at::Tensor cols;       // [tokens, k] int64: each token's k largest |x|, their columns
  at::Tensor xo;         // [tokens, k] float32: their values where over the threshold, else 0
};
Int8Activation int8_split(const at::Tensor& x, double threshold);

// Returns [tokens, out] in x's dtype; bias: [out] or undefined.
at::Tensor int8_linear(const Int8Activation& a, const at::Tensor& q, const at::Tensor& scale, const at::Tensor& bias);
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, const at::Tensor& bias,
                       double threshold);

}  // namespace cascade::stage
