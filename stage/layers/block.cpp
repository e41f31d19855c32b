#include "stage/layers/block.h"

namespace cascade::stage {

// Without branch norms the residual adds ride in the output projections.
at::Tensor DecoderBlock::attention_half(const at::Tensor& x, StepContext& ctx) {
  if (!p_.post_attn) return (*p_.attention)((*p_.input_norm)(x), ctx, x);
  return x + (*p_.post_attn)((*p_.attention)((*p_.input_norm)(x), ctx));
}

at::Tensor DecoderBlock::mlp_half(const at::Tensor& y) {
  if (!p_.post_mlp) return (*p_.mlp)((*p_.pre_mlp_norm)(y), y);
  return y + (*p_.post_mlp)((*p_.mlp)((*p_.pre_mlp_norm)(y)));
}

at::Tensor DecoderBlock::forward(const at::Tensor& x, StepContext& ctx) {
  const at::Tensor y = p_.attention ? attention_half(x, ctx) : x;
  return p_.mlp ? mlp_half(y) : y;
}

}  // namespace cascade::stage
