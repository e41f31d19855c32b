// A projection of the layer toolkit: nn.Linear (weight [out, in]) or GPT-2's Conv1D
// (weight [in, out]), with an optional bias, in the compute dtype or as LLM.int8 rows
// (stage/kernels/quant.h) when the loader quantized it. The layer owns its
// quantization: a family asks for a projection by name and shape and never sees how
// it is stored.
//
// Plain value; immutable after load (fuse() replaces parts once, in Module::finalize).
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <string>

#include "stage/family.h"
#include "stage/kernels/ops.h"
#include "stage/kernels/quant.h"

namespace cascade::stage {

struct Linear {
  at::Tensor w;      // [out, in] (float, or int8); Conv1D in float: [in, out]
  at::Tensor b;      // [out] or undefined
  at::Tensor scale;  // [out] float32 when w is int8
  double threshold = 0;
  bool conv1d = false;  // w is stored [in, out] (float Conv1D): y = b + x @ w

  // `prefix`.weight (and `prefix`.bias when `bias`) through the weight source.
  static Linear load(const WeightSource& W, const std::string& prefix, int64_t out, int64_t in, bool bias,
                     bool conv1d = false);
  // One projection from several that read the same input (q/k/v, gate/up), their
  // outputs side by side; empties the parts. Only for nn.Linear parts alike: all float
  // or all int8 with one threshold, biases all present or all absent. Returns an
  // undefined Linear otherwise.
  static Linear fuse(std::initializer_list<Linear*> parts);

  bool defined() const { return w.defined(); }
  bool int8() const { return scale.defined(); }
  // The input as this projection wants it: split once for LLM.int8, then shared by
  // every projection of the same kind that reads it.
  Int8Activation input(const at::Tensor& x) const;       // x [tokens, in]
  at::Tensor operator()(const Int8Activation& a) const;  // -> [tokens, out] in x's dtype
  at::Tensor operator()(const at::Tensor& x) const { return (*this)(input(x)); }
  // r + (*this)(a), r [tokens, out]: the add rides in the decode GEMV where it applies.
  // r_spent: the caller reads r no more, so the sum may be written into it
  // (apply_linear_add); use the result, not r.
  at::Tensor add_to(const at::Tensor& r, const Int8Activation& a, bool r_spent = false) const;
  // A fused gate/up projection ([gate; up] rows, out = 2 * I) through `act`:
  // act(gate(a)) * up(a) [tokens, I], in one decode GEMV where it applies.
  at::Tensor gated(const Int8Activation& a, Activation act) const;
};

}  // namespace cascade::stage
