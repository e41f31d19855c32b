// Rotary position embeddings with HF's scaling variants: default, linear, dynamic
// (NTK, recomputed from each sequence's length) and llama3 (banded frequencies).
// Immutable after construction and place(); safe to share.
#pragma once

#include <ATen/ATen.h>

#include <utility>

#include "stage/batch.h"
#include "stage/model_config.h"

namespace cascade::stage {

class Rope {
 public:
  Rope(const RopeConfig& cfg, int64_t head_dim, int64_t max_position_embeddings);

  // Keeps the static inverse frequencies on `device`, so a step copies nothing to it
  // (and the step can be captured in a CUDA graph).
  void place(at::Device device) { inv_freq_ = inv_freq_.to(device); }
  // [head_dim / 2] float32 inverse frequencies for a sequence `seq_len` tokens long
  // (only "dynamic" depends on it).
  at::Tensor inv_freq(int64_t seq_len) const;
  // cos and sin [tokens, head_dim] float32 for every token of the batch.
  std::pair<at::Tensor, at::Tensor> cos_sin(const Batch& batch, const at::Tensor& positions) const;

 private:
  at::Tensor default_inv_freq(double base) const;
  RopeConfig cfg_;
  int64_t dim_;
  int64_t max_pos_;
  at::Tensor inv_freq_;  // static variants: computed once
};

// x [tokens, heads, head_dim] rotated by cos/sin [tokens, head_dim] (cast to x's dtype).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace cascade::stage
