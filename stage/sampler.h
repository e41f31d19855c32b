// Turns a sequence's logits into its next token: greedy argmax, or temperature /
// top-k / top-p sampling with HF's semantics (temperature, then top-k, then top-p).
//
// Each sequence owns a Sampler seeded from its request, so its tokens depend only on
// its own seed and logits, never on what else shares the batch. The generator is
// std::mt19937_64, so the same seed gives the same tokens on every LibTorch version.
// Thread-safety: none; one Sampler per sequence.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <random>

namespace cascade::stage {

struct SamplingParams {
  double temperature = 0.0;  // <= 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
  bool greedy() const { return temperature <= 0.0; }
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // logits [vocab], any float dtype and device.
  int64_t next(const at::Tensor& logits);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace cascade::stage
