#include "stage/layers/block.h"

namespace cascade::stage {

// Without branch norms the residual adds ride in the output projections.
at::Tensor DecoderBlock::attention_half(const at::Tensor& x, StepContext& ctx) {
  if (!p_.post_attn) return (*p_.attention)((*p_.input_norm)(x), ctx, x, ctx.input_spent);
  return x + (*p_.post_attn)((*p_.attention)((*p_.input_norm)(x), ctx));
}

at::Tensor DecoderBlock::mlp_half(const at::Tensor& y, bool y_spent) {
  if (!p_.post_mlp) return (*p_.mlp)((*p_.pre_mlp_norm)(y), y, y_spent);
  return y + (*p_.post_mlp)((*p_.mlp)((*p_.pre_mlp_norm)(y)));
}

at::Tensor DecoderBlock::forward(const at::Tensor& x, StepContext& ctx) {
  // The attention half's output is this block's own: the MLP's residual add may write
  // into it. The block's input only where the model says it is spent.
  const at::Tensor y = p_.attention ? attention_half(x, ctx) : x;
  return p_.mlp ? mlp_half(y, /*y_spent=*/p_.attention.has_value()) : y;
}

}  // namespace cascade::stage
