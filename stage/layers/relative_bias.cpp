#include "stage/layers/relative_bias.h"

#include <cmath>

namespace cascade::stage {

at::Tensor relative_position_bucket(const at::Tensor& rel, bool bidirectional, int64_t num_buckets,
                                    int64_t max_distance) {
  at::Tensor buckets = at::zeros_like(rel);
  at::Tensor dist;
  if (bidirectional) {
    num_buckets /= 2;
    buckets = buckets + rel.gt(0).to(at::kLong) * num_buckets;  // keys after the query: the upper half
    dist = rel.abs();
  } else {
    dist = -at::clamp_max(rel, 0);  // only keys at or before the query count
  }
  const int64_t max_exact = num_buckets / 2;
  // The logarithmic branch in float32 with the constants as transformers writes them, so
  // truncation lands on the same bucket; distances below max_exact use the exact branch
  // (clamped here only to keep log() finite).
  const at::Tensor far = at::clamp_min(dist, max_exact).to(at::kFloat);
  at::Tensor large = (at::log(far / static_cast<double>(max_exact)) /
                      std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
                      static_cast<double>(num_buckets - max_exact))
                         .to(at::kLong) +
                     max_exact;
  large = at::clamp_max(large, num_buckets - 1);
  return buckets + at::where(dist.lt(max_exact), dist, large);
}

void RelativeBias::declare(ModuleSpec* s, const std::string& prefix) { s->tensors.push_back(prefix + ".weight"); }

RelativeBias RelativeBias::load(const RelativeBiasSpec& spec, const WeightSource& W, const std::string& prefix) {
  return {spec, W(prefix + ".weight", {spec.num_buckets, spec.heads})};
}

at::Tensor RelativeBias::operator()(const at::Tensor& q_pos, const at::Tensor& k_pos) const {
  const at::Tensor rel = k_pos.unsqueeze(0) - q_pos.unsqueeze(1);  // [q, k]
  const at::Tensor b = relative_position_bucket(rel, spec.bidirectional, spec.num_buckets, spec.max_distance);
  return table.index_select(0, b.reshape(-1)).view({rel.size(0), rel.size(1), spec.heads}).permute({2, 0, 1});
}

at::Tensor RelativeBias::of_relative(const at::Tensor& rel) const {
  const at::Tensor b = relative_position_bucket(rel, spec.bidirectional, spec.num_buckets, spec.max_distance);
  return table.index_select(0, b.reshape(-1)).view({rel.size(0), rel.size(1), spec.heads}).permute({0, 2, 1});
}

}  // namespace cascade::stage
