#include "stage/layers/block.h"

namespace cascade::stage {

at::Tensor DecoderBlock::forward(const at::Tensor& x, StepContext& ctx) {
  if (!p_.post_attn && !p_.post_mlp) {  // the residual adds ride in the output projections
    const at::Tensor y = p_.attention(p_.input_norm(x), ctx, x);
    return p_.mlp(p_.pre_mlp_norm(y), y);
  }
  at::Tensor a = p_.attention(p_.input_norm(x), ctx);
  if (p_.post_attn) a = (*p_.post_attn)(a);
  const at::Tensor y = x + a;
  at::Tensor m = p_.mlp(p_.pre_mlp_norm(y));
  if (p_.post_mlp) m = (*p_.post_mlp)(m);
  return y + m;
}

}  // namespace cascade::stage
