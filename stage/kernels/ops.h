// Elementwise building blocks shared by the families, written to match Hugging Face's
// float semantics (where the upcasts happen matters for 1e-4 parity).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace cascade::stage {

// at::linear (x [tokens, in], w [out, in], b [out] or undefined), through the decode GEMV
// kernel (stage/fused_kernels.h) where it applies.
at::Tensor apply_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});
// r + apply_linear(x, w, b), the add in the GEMV's epilogue where the kernel applies.
// `r_spent`: the caller reads r no more, so where no GEMV kernel applies (cuBLAS on the
// GPU past its few tokens) the product is added into r in place, as the GEMM's
// beta = 1, and r is returned: one kernel instead of a GEMM and an add.
// CASCADE_RESIDUAL_GEMM=0 turns that off, to measure.
at::Tensor apply_linear_add(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r,
                            bool r_spent = false);

// LlamaRMSNorm: normalise in float32, cast back, then scale. x [tokens, hidden].
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Activation by config.json name: silu, relu, gelu, gelu_new, gelu_pytorch_tanh.
// The values are the decode kernels' activation codes (stage/kernels/cuda_kernels.h).
enum class Activation { kSilu, kRelu, kGelu, kGeluTanh };
// Throws ModelConfigError naming the activation when unsupported.
Activation parse_activation(const std::string& name);
at::Tensor activate(const at::Tensor& x, Activation a);
// A gated MLP's first half: w [2 * I, in] = [w_gate; w_up] -> act(x w_gate^T) * (x w_up^T)
// [tokens, I]; one kernel at decode on the GPU, else linear, activate and multiply.
at::Tensor apply_gated(const at::Tensor& x, const at::Tensor& w, Activation a);
// The same with gate and up apart ([I, in] each, no bias): one CPU kernel where it
// applies (the CPU keeps a checkpoint's weights as they lie), else two linears,
// activate and multiply.
at::Tensor apply_gated(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, Activation a);
// act(gu[:, :I]) * gu[:, I:] for gu [tokens, 2 * I] (gate, then up): one kernel on the
// GPU, else activate and multiply.
at::Tensor gated_activation(const at::Tensor& gu, Activation a);

}  // namespace cascade::stage
