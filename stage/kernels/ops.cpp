#include "stage/kernels/ops.h"

#include <cmath>

#include "config/env.h"
#include "stage/kernels/cpu_gemv.h"
#include "stage/kernels/cpu_rows.h"
#include "stage/kernels/fused_kernels.h"
#include "stage/model_config.h"

namespace cascade::stage {

at::Tensor apply_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  at::Tensor y = x.is_cuda() ? fused_linear(x, w, b) : cpu_linear(x, w, b);
  return y.defined() ? y : at::linear(x, w, b);
}

at::Tensor apply_linear_add(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r,
                            bool r_spent) {
  // The residual add in the GEMV's epilogue.
  at::Tensor y = x.is_cuda() ? fused_linear_add(x, w, b, r) : cpu_linear(x, w, b, r);
  if (y.defined()) return y;
  static const bool into_r = config::env_flag("CASCADE_RESIDUAL_GEMM", true);
  if (into_r && r_spent && !b.defined() && x.dim() == 2 && w.dim() == 2 && r.is_contiguous() &&
      r.scalar_type() == x.scalar_type() && w.scalar_type() == x.scalar_type() &&
      r.sizes() == at::IntArrayRef({x.size(0), w.size(0)}))
    return at::Tensor(r).addmm_(x, w.t());  // r's old value is the GEMM's C, beta = 1
  return r + apply_linear(x, w, b);
}

at::Tensor apply_gated(const at::Tensor& x, const at::Tensor& w, Activation a) {
  // The activation and product in the GEMV's epilogue.
  at::Tensor y =
      x.is_cuda() ? fused_gated_linear(x, w, static_cast<int>(a)) : cpu_gated_linear(x, w, static_cast<int>(a));
  if (y.defined()) return y;
  return gated_activation(apply_linear(x, w), a);
}

at::Tensor apply_gated(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, Activation a) {
  if (!x.is_cuda()) {
    at::Tensor y = cpu_gated_linear(x, gate, up, static_cast<int>(a));
    if (y.defined()) return y;
  }
  return activate(apply_linear(x, gate), a) * apply_linear(x, up);
}

at::Tensor gated_activation(const at::Tensor& gu, Activation a) {
  if (gu.is_cuda()) {  // one kernel instead of two strided ones
    at::Tensor y = fused_gated_act(gu, static_cast<int>(a));
    if (y.defined()) return y;
  }
  const int64_t I = gu.size(1) / 2;
  return activate(gu.narrow(1, 0, I), a) * gu.narrow(1, I, I);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (x.is_cuda()) {
    at::Tensor y = fused_rms_norm(x, weight, eps);  // one kernel instead of eight
    if (y.defined()) return y;
  } else {
    at::Tensor y = cpu_rms_norm(x, weight, eps);  // one pass instead of eight calls
    if (y.defined()) return y;
  }
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(var + eps);
  return weight * xf.to(x.scalar_type());
}

Activation parse_activation(const std::string& name) {
  if (name == "silu" || name == "swish") return Activation::kSilu;
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::kGeluTanh;
  throw ModelConfigError("config.json: activation '" + name +
                         "' is not supported (supported: silu, relu, gelu, gelu_new, gelu_pytorch_tanh)");
}

at::Tensor activate(const at::Tensor& x, Activation a) {
  switch (a) {
    case Activation::kSilu:
      return at::silu(x);
    case Activation::kRelu:
      return at::relu(x);
    case Activation::kGelu:
      return at::gelu(x);
    case Activation::kGeluTanh:
      // The tanh approximation written out as HF's NewGELUActivation does.
      return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * at::pow(x, 3.0))));
  }
  return x;
}

}  // namespace cascade::stage
