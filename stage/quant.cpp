#include "stage/quant.h"

namespace cascade::stage {

bool int8_module(const ModuleSpec& spec, const std::vector<std::string>& skip) {
  if (spec.kind != ModuleKind::kDecoderLayer) return false;
  for (const auto& s : skip)
    if (!s.empty() && spec.name.find(s) != std::string::npos) return false;
  return true;
}

bool int8_tensor(const std::string& name, size_t rank) {
  static const std::string suffix = "_proj.weight";
  return rank == 2 && name.size() > suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Int8Rows quantize_rows(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2, "int8 quantization takes a [out, in] weight, got ", w.sizes());
  const at::Tensor f = w.to(at::kFloat);
  const at::Tensor scale = std::get<0>(f.abs().max(1)).div_(127.0).clamp_min_(1e-12);  // [out]
  const at::Tensor q = f.div(scale.unsqueeze(1)).round_().clamp_(-127, 127).to(at::kChar);
  return {q, scale};
}

at::Tensor dequantize(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype) {
  return q.to(at::kFloat).mul_(scale.unsqueeze(1)).to(dtype);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, const at::Tensor& bias,
                       double threshold) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == q.size(1), "int8_linear: input ", x.sizes(), " does not fit weight ",
              q.sizes());
  const at::Tensor xf = x.to(at::kFloat);
  at::Tensor y;
  if (threshold <= 0) {
    y = at::linear(xf, dequantize(q, scale, at::kFloat));
  } else {
    const at::Tensor outlier = xf.abs().ge(threshold).any(0);  // [in]
    const at::Tensor regular = xf.masked_fill(outlier.unsqueeze(0), 0.0);
    const at::Tensor sx = std::get<0>(regular.abs().max(1)).div_(127.0).clamp_min_(1e-12);  // [tokens]
    const at::Tensor xq = regular.div(sx.unsqueeze(1)).round_().clamp_(-127, 127);
    // Exact int8 x int8 -> int32 sums, then the row and column scales.
    y = at::mm(xq.to(at::kDouble), q.to(at::kDouble).t()).to(at::kFloat);
    y.mul_(sx.unsqueeze(1)).mul_(scale.unsqueeze(0));
    const at::Tensor cols = outlier.nonzero().squeeze(1);
    if (cols.numel() > 0) {
      y.add_(at::mm(xf.index_select(1, cols), dequantize(q.index_select(1, cols), scale, at::kFloat).t()));
    }
  }
  if (bias.defined()) y.add_(bias.to(at::kFloat));
  return y.to(x.scalar_type());
}

}  // namespace cascade::stage
