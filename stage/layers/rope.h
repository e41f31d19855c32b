// Rotary position embeddings with HF's scaling variants: default, linear, dynamic
// (NTK, recomputed from each sequence's length), llama3 (banded frequencies) and
// longrope (Phi-3: short or long per-frequency factors by each sequence's length, cos
// and sin scaled), on all of head_dim or its first rotary_dim dims.
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
  void place(at::Device device) {
    inv_freq_ = inv_freq_.to(device);
    if (long_inv_freq_.defined()) long_inv_freq_ = long_inv_freq_.to(device);
  }
  // [rotary_dim / 2] float32 inverse frequencies for a sequence `seq_len` tokens long
  // ("dynamic" and "longrope" depend on it).
  at::Tensor inv_freq(int64_t seq_len) const;
  // cos and sin [tokens, rotary_dim] float32 for every token of the batch. `decode`:
  // each sequence adds one token, so its length is its position + 1; read from
  // `positions` on the device, with no host work that a CUDA graph would freeze.
  std::pair<at::Tensor, at::Tensor> cos_sin(const Batch& batch, const at::Tensor& positions, bool decode = false) const;

 private:
  at::Tensor default_inv_freq(double base) const;
  at::Tensor longrope_freqs(const Batch& batch, const at::Tensor& pos, bool decode) const;
  RopeConfig cfg_;
  int64_t dim_;  // rotated dims
  int64_t max_pos_;
  at::Tensor inv_freq_;       // static variants: computed once (longrope: the short one)
  at::Tensor long_inv_freq_;  // longrope: past original_max_position
};

// x [tokens, heads, head_dim] rotated by cos/sin [tokens, rotary_dim] (cast to x's
// dtype); dims past rotary_dim pass through.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace cascade::stage
