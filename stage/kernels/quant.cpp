#include "stage/kernels/quant.h"

#include <algorithm>
#include <vector>

#include "stage/kernels/cpu_gemv.h"
#include "stage/kernels/fused_kernels.h"
#include "stage/kernels/int8_kernels.h"
#include "storage/compat.h"

namespace cascade::stage {
namespace {

// The compute type of the floating-point parts: x's own on CUDA (tensor cores), float32
// on CPU, where 16-bit matmuls are slow or (float16 on 1.13) missing.
at::ScalarType compute_type(const at::Tensor& x) { return x.is_cuda() ? x.scalar_type() : at::kFloat; }

// Exact int8 dot products: xq [T, K] int8, q [N, K] int8 -> [T, N] float32.
at::Tensor int_dots(const at::Tensor& xq, const at::Tensor& q) {
  const at::Tensor fast = compat::int8_mm(xq, q);
  if (fast.defined()) return fast.to(at::kFloat);
  // float32 holds every integer below 2^24 exactly: 1024 products of at most 127 * 127 are
  // below 2^24, so each block's sum is exact; blocks are summed in float64.
  constexpr int64_t kBlock = 1024;
  const int64_t K = xq.size(1);
  if (K <= kBlock) return at::mm(xq.to(at::kFloat), q.to(at::kFloat).t());
  at::Tensor acc = at::zeros({xq.size(0), q.size(0)}, xq.options().dtype(at::kDouble));
  for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
    const int64_t n = std::min(kBlock, K - k0);
    acc.add_(at::mm(xq.narrow(1, k0, n).to(at::kFloat), q.narrow(1, k0, n).to(at::kFloat).t()).to(at::kDouble));
  }
  return acc.to(at::kFloat);
}

// Each token's outliers times their weight columns: xo [T, k], cols [T, k], q [N, K] ->
// [T, N] float32, through a gathered float copy of the columns, kChunk tokens at a time.
at::Tensor outlier_dots(const at::Tensor& xo, const at::Tensor& cols, const at::Tensor& q) {
  constexpr int64_t kChunk = 32;
  const int64_t T = xo.size(0), k = xo.size(1), N = q.size(0);
  std::vector<at::Tensor> parts;
  for (int64_t t0 = 0; t0 < T; t0 += kChunk) {
    const int64_t n = std::min(kChunk, T - t0);
    const at::Tensor w = q.index_select(1, cols.narrow(0, t0, n).reshape({-1})).to(at::kFloat).view({N, n, k});
    parts.push_back(w.mul(xo.narrow(0, t0, n).unsqueeze(0)).sum(2).t());  // [n, N]
  }
  return at::cat(parts);
}

// The columns of each row's k largest values of a [T, K] (float32, >= 0 or NaN), ties
// taken by column, as the GPU split takes them (stage/kernels/int8_kernels.h): topk over
// keys that order by value, then by the lower column. A non-negative float's bits order
// as integers do, and K < 2^31, so value bits * K + (K - 1 - column) is exact in int64.
at::Tensor largest_columns(const at::Tensor& a, int64_t k) {
  const int64_t K = a.size(1);
  const at::Tensor bits = a.contiguous().view(at::kInt).to(at::kLong);
  const at::Tensor key = bits.mul_(K).add_(at::arange(K - 1, -1, -1, bits.options()));
  return std::get<1>(key.topk(k, 1));
}

}  // namespace

bool int8_module(const ModuleSpec& spec, const std::vector<std::string>& skip) {
  if (spec.int8.empty()) return false;
  for (const auto& s : skip)
    if (!s.empty() && spec.name.find(s) != std::string::npos) return false;
  return true;
}

uint64_t int8_bytes(const std::vector<int64_t>& shape, Int8Layout layout) {
  TORCH_CHECK(shape.size() == 2 && layout != Int8Layout::kNone, "int8_bytes: not an int8 weight");
  const int64_t out = layout == Int8Layout::kRows ? shape[0] : shape[1];
  return static_cast<uint64_t>(shape[0] * shape[1]) + 4 * static_cast<uint64_t>(out);
}

Int8Rows quantize_rows(const at::Tensor& w, Int8Layout layout) {
  TORCH_CHECK(w.dim() == 2 && layout != Int8Layout::kNone, "int8 quantization takes a 2-D weight, got ", w.sizes());
  const at::Tensor f = (layout == Int8Layout::kTransposed ? w.t() : w).to(at::kFloat).contiguous();  // [out, in]
  const at::Tensor scale = std::get<0>(f.abs().max(1)).div_(127.0).clamp_min_(1e-12);                // [out]
  const at::Tensor q = f.div(scale.unsqueeze(1)).round_().clamp_(-127, 127).to(at::kChar).contiguous();
  return {q, scale};
}

at::Tensor dequantize(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype) {
  return q.to(at::kFloat).mul_(scale.unsqueeze(1)).to(dtype);
}

Int8Activation int8_split(const at::Tensor& x, double threshold) {
  TORCH_CHECK(x.dim() == 2, "int8: activations must be [tokens, in], got ", x.sizes());
  Int8Activation a;
  a.x = x;
  a.threshold = threshold;
  if (threshold <= 0) return a;
  if (int8_split_kernel(x, threshold, kMaxOutlierColumns, &a.ints, &a.sx)) return a;  // decode on a GPU
  const int64_t K = x.size(1), k = std::min(kMaxOutlierColumns, K);
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor mag = xf.abs(), cols = largest_columns(mag, k);  // [T, k]
  const at::Tensor outlier = mag.gather(1, cols).ge(threshold);     // [T, k]
  a.cols = cols;
  a.xo = xf.gather(1, cols).mul_(outlier);  // [T, k]
  const at::Tensor mask = at::zeros(xf.sizes(), outlier.options()).scatter_(1, cols, outlier);
  const at::Tensor regular = xf.masked_fill(mask, 0.0);                                      // [T, K]
  a.sx = std::get<0>(regular.abs().max(1, /*keepdim=*/true)).div_(127.0).clamp_min_(1e-12);  // [T, 1]
  a.xq = regular.div_(a.sx).round_().clamp_(-127, 127).to(at::kChar);
  return a;
}

at::Tensor int8_linear(const Int8Activation& a, const at::Tensor& q, const at::Tensor& scale, const at::Tensor& bias) {
  const at::Tensor& x = a.x;
  TORCH_CHECK(x.dim() == 2 && x.size(1) == q.size(1), "int8_linear: input ", x.sizes(), " does not fit weight ",
              q.sizes());
  const at::ScalarType ct = compute_type(x);
  // Decode: one kernel reads the weight once (stage/kernels/fused_kernels.h on CUDA,
  // weight-only or the split kernel's ints; stage/kernels/cpu_gemv.h on the CPU,
  // weight-only there), bias and rounding as below.
  if (x.is_cuda() && (a.threshold <= 0 || a.ints.defined())) {
    const at::Tensor d =
        a.ints.defined() ? fused_linear(a.ints, q, bias, scale, a.sx) : fused_linear(x, q, bias, scale);
    if (d.defined()) return d;
  }
  at::Tensor y;  // [T, out] float32
  if (a.ints.defined()) {
    // The split kernel's form through float32 products: the int8 rows' integers, and the
    // listed outliers (unused entries are column 0 with value 0).
    const at::Tensor cols = a.sx.narrow(1, 2, kInt8SplitList).to(at::kLong);
    const at::Tensor xo = a.sx.narrow(1, 2 + kInt8SplitList, kInt8SplitList);
    y = at::linear(a.ints.to(at::kFloat), q.to(at::kFloat))
            .mul_(a.sx.narrow(1, 0, 1))
            .add_(outlier_dots(xo, cols, q))
            .mul_(scale.unsqueeze(0));
  } else if (!x.is_cuda() && a.threshold <= 0) {
    y = cpu_int8_linear(x, q, scale);
  }
  if (!y.defined()) {
    if (a.threshold <= 0) {
      // The int8 values are exact in every float type, so no dequantized copy is made:
      // the scales apply to the product's columns.
      y = at::linear(x.to(ct), q.to(ct)).to(at::kFloat);
    } else {
      y = int_dots(a.xq, q).mul_(a.sx).add_(outlier_dots(a.xo, a.cols, q));
    }
    y.mul_(scale.unsqueeze(0));
  }
  if (bias.defined()) y.add_(bias.to(at::kFloat));
  return y.to(x.scalar_type());
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, const at::Tensor& bias,
                       double threshold) {
  return int8_linear(int8_split(x, threshold), q, scale, bias);
}

}  // namespace cascade::stage
