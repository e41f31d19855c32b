// The residual decoder block most families are made of, from toolkit parts:
//
//   y   = x + post_attn(attention(input_norm(x)))
//   out = y + post_mlp(mlp(pre_mlp_norm(y)))
//
// post_attn / post_mlp are optional norms on the branch outputs (Gemma 2's "sandwich").
// A Module of its own (one hf_device_map entry per layer). Not thread-safe.
#pragma once

#include <optional>

#include "stage/family.h"
#include "stage/layers/attention.h"
#include "stage/layers/mlp.h"
#include "stage/layers/norm.h"

namespace cascade::stage {

class DecoderBlock : public Module {
 public:
  struct Parts {
    Norm input_norm;
    Attention attention;
    Norm pre_mlp_norm;
    Mlp mlp;
    std::optional<Norm> post_attn, post_mlp;
  };
  // Per-token activations the block itself holds (residuals and norm outputs), for
  // ModuleCost::act_elems_per_token on top of its attention's and MLP's.
  static int64_t residual_elems(int64_t hidden) { return 4 * hidden; }

  explicit DecoderBlock(Parts p) : p_(std::move(p)) {}
  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override;  // [tokens, hidden]
  void finalize() override {
    p_.attention.finalize();
    p_.mlp.finalize();
  }
  bool capturable() const override { return p_.mlp.capturable(); }

 private:
  Parts p_;
};

}  // namespace cascade::stage
