// Normalisation layers of the toolkit, each as Hugging Face computes it (where the
// float32 upcast and the cast back happen matters for 1e-4 parity):
//   kRms         LlamaRMSNorm: normalise in float32, cast back, then w * x
//   kRmsOnePlus  GemmaRMSNorm: normalise and scale by (1 + w) in float32, then cast
//   kLayer       nn.LayerNorm with weight and bias
// Plain value; immutable after load.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "stage/family.h"

namespace cascade::stage {

enum class NormKind { kRms, kRmsOnePlus, kLayer };

struct Norm {
  NormKind kind = NormKind::kRms;
  at::Tensor w, b;  // [dim]; b only for kLayer
  double eps = 1e-6;

  // `prefix`.weight (and `prefix`.bias for kLayer), each [dim].
  static Norm load(const WeightSource& W, const std::string& prefix, int64_t dim, NormKind kind, double eps);
  at::Tensor operator()(const at::Tensor& x) const;  // [..., dim] -> [..., dim]
};

// The final norm of a model as a Module of its own (hf_device_map's "model.norm").
class NormModule : public Module {
 public:
  explicit NormModule(Norm n) : n_(std::move(n)) {}
  at::Tensor forward(const at::Tensor& x, StepContext&) override { return n_(x); }

 private:
  Norm n_;
};

}  // namespace cascade::stage
