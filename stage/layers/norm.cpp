#include "stage/layers/norm.h"

#include "stage/kernels/ops.h"

namespace cascade::stage {

Norm Norm::load(const WeightSource& W, const std::string& prefix, int64_t dim, NormKind kind, double eps) {
  Norm n;
  n.kind = kind;
  n.eps = eps;
  n.w = W(prefix + ".weight", {dim});
  if (kind == NormKind::kLayer) n.b = W(prefix + ".bias", {dim});
  return n;
}

at::Tensor Norm::operator()(const at::Tensor& x) const {
  switch (kind) {
    case NormKind::kRms:
      return rms_norm(x, w, eps);
    case NormKind::kRmsOnePlus: {
      const at::Tensor xf = x.to(at::kFloat);
      const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
      return (normed * (1.0 + w.to(at::kFloat))).to(x.scalar_type());
    }
    case NormKind::kLayer:
      return at::layer_norm(x, {x.size(-1)}, w, b, eps);
  }
  return x;
}

}  // namespace cascade::stage
