#include "stage/layers/linear.h"

#include <vector>

#include "stage/kernels/fused_kernels.h"
#include "stage/kernels/ops.h"

namespace cascade::stage {

Linear Linear::load(const WeightSource& W, const std::string& prefix, int64_t out, int64_t in, bool bias, bool conv1d) {
  Linear l;
  l.w = W(prefix + ".weight", conv1d ? std::vector<int64_t>{in, out} : std::vector<int64_t>{out, in});
  if (bias) l.b = W(prefix + ".bias", {out});
  if (l.w.scalar_type() == at::kChar) {  // quantized at load, a Conv1D as its transpose
    l.scale = W(prefix + ".weight:scale", {});
    l.threshold = W.int8_threshold;
  } else {
    l.conv1d = conv1d;
  }
  return l;
}

Linear Linear::fuse(std::initializer_list<Linear*> parts) {
  const Linear& first = **parts.begin();
  const bool biased = first.b.defined(), int8 = first.int8();
  for (const Linear* p : parts)
    if (p->conv1d || p->b.defined() != biased || p->int8() != int8 || p->threshold != first.threshold) return {};
  Linear f;
  f.threshold = first.threshold;
  std::vector<at::Tensor> w, b, s;
  for (Linear* p : parts) {
    w.push_back(p->w);
    if (biased) b.push_back(p->b);
    if (int8) s.push_back(p->scale);
    *p = Linear();  // release the separate copy
  }
  f.w = at::cat(w);
  if (biased) f.b = at::cat(b);
  if (int8) f.scale = at::cat(s);
  return f;
}

Int8Activation Linear::input(const at::Tensor& x) const {
  return int8_split(x, int8() ? threshold : 0.0);  // weight-only or float: x as is
}

namespace {

// What the decode kernels read for int8 rows on the GPU: x (weight-only), or the split
// kernel's ints and their scales (LLM.int8 with outliers). False where neither.
bool kernel_input(const Int8Activation& a, at::Tensor* x, at::Tensor* sx) {
  if (!a.x.is_cuda()) return false;
  if (a.threshold <= 0)
    *x = a.x;
  else if (a.ints.defined())
    *x = a.ints, *sx = a.sx;
  return x->defined();
}

}  // namespace

at::Tensor Linear::add_to(const at::Tensor& r, const Int8Activation& a, bool r_spent) const {
  at::Tensor x, sx;
  if (int8() && kernel_input(a, &x, &sx)) {
    const at::Tensor y = fused_linear_add(x, w, b, r, scale, sx);  // the add in the decode kernel
    if (y.defined()) return y;
  }
  if (int8() || conv1d) return r + (*this)(a);
  return apply_linear_add(a.x, w, b, r, r_spent);
}

at::Tensor Linear::gated(const Int8Activation& a, Activation act) const {
  if (!int8() && !conv1d && !b.defined()) return apply_gated(a.x, w, act);
  at::Tensor x, sx;
  if (int8() && !b.defined() && kernel_input(a, &x, &sx)) {
    const at::Tensor y = fused_gated_linear(x, w, static_cast<int>(act), scale, sx);
    if (y.defined()) return y;
  }
  return gated_activation((*this)(a), act);
}

at::Tensor Linear::operator()(const Int8Activation& a) const {
  if (int8()) return int8_linear(a, w, scale, b);
  if (conv1d) return b.defined() ? at::addmm(b, a.x, w) : at::mm(a.x, w);
  return apply_linear(a.x, w, b);
}

}  // namespace cascade::stage
