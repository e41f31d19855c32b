// Elementwise building blocks shared by the families, written to match Hugging Face's
// float semantics (where the upcasts happen matters for 1e-4 parity).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace cascade::stage {

// LlamaRMSNorm: normalise in float32, cast back, then scale. x [tokens, hidden].
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Activation by config.json name: silu, relu, gelu, gelu_new, gelu_pytorch_tanh.
enum class Activation { kSilu, kRelu, kGelu, kGeluTanh };
// Throws ModelConfigError naming the activation when unsupported.
Activation parse_activation(const std::string& name);
at::Tensor activate(const at::Tensor& x, Activation a);

}  // namespace cascade::stage
