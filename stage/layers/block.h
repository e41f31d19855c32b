// The residual decoder block most families are made of, from toolkit parts:
//
//   y   = x + post_attn(attention(input_norm(x)))
//   out = y + post_mlp(mlp(pre_mlp_norm(y)))
//
// post_attn / post_mlp are optional norms on the branch outputs (Gemma 2's "sandwich").
// A Module of its own (one hf_device_map entry per layer). A mixture-of-experts layer is
// two of them: the attention half (`model.layers.N`, no MLP) and the experts half
// (`model.layers.N.<mlp prefix>`, no attention), which the planner may place apart.
// Not thread-safe.
#pragma once

#include <optional>

#include "stage/family.h"
#include "stage/layers/attention.h"
#include "stage/layers/mlp.h"
#include "stage/layers/norm.h"

namespace cascade::stage {

class DecoderBlock : public Module {
 public:
  struct Parts {  // at least one half: attention (with input_norm), mlp (with pre_mlp_norm)
    std::optional<Norm> input_norm;
    std::optional<Attention> attention;
    std::optional<Norm> pre_mlp_norm;
    std::optional<Mlp> mlp;
    std::optional<Norm> post_attn, post_mlp;
  };
  // Per-token activations the block itself holds (residuals and norm outputs), for
  // ModuleCost::act_elems_per_token on top of its attention's and MLP's.
  static int64_t residual_elems(int64_t hidden) { return 4 * hidden; }

  explicit DecoderBlock(Parts p) : p_(std::move(p)) {}
  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override;  // [tokens, hidden]
  void finalize() override {
    if (p_.attention) p_.attention->finalize();
    if (p_.mlp) p_.mlp->finalize();
  }
  bool capturable() const override { return !p_.mlp || p_.mlp->capturable(); }

 private:
  at::Tensor attention_half(const at::Tensor& x, StepContext& ctx);
  at::Tensor mlp_half(const at::Tensor& y, bool y_spent);  // y_spent: Mlp's r_spent

  Parts p_;
};

}  // namespace cascade::stage
