// T5's relative position bias, a toolkit layer: each attention head adds a learned
// scalar to every query-key score, looked up by the bucket of the key's position minus
// the query's. Buckets are exact for small distances and logarithmic up to
// max_distance (farther ones share the last); bidirectional attention (T5's encoder)
// gives each direction half of them, causal attention (its decoder) only looks back.
// T5 keeps the table in the first layer of each stack and shares it with the others.
// Plain value; immutable after load; thread-safe to read.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "stage/family.h"

namespace cascade::stage {

struct RelativeBiasSpec {
  int64_t heads = 0;
  int64_t num_buckets = 32;    // relative_attention_num_buckets
  int64_t max_distance = 128;  // relative_attention_max_distance
  bool bidirectional = true;
};

// The bucket of each relative position (key - query): rel int64, any shape -> int64,
// same shape, as transformers' T5Attention._relative_position_bucket computes it
// (float32 logarithm, truncated).
at::Tensor relative_position_bucket(const at::Tensor& rel, bool bidirectional, int64_t num_buckets,
                                    int64_t max_distance);

struct RelativeBias {
  RelativeBiasSpec spec;
  at::Tensor table;  // [num_buckets, heads]: `prefix`.weight, an nn.Embedding

  // Adds the table's tensor and size to `s` (it is tiny; no FLOPs worth counting).
  static void declare(ModuleSpec* s, const std::string& prefix);
  static RelativeBias load(const RelativeBiasSpec& spec, const WeightSource& W, const std::string& prefix);

  // q_pos [q], k_pos [k] int64 (on the table's device) -> bias [heads, q, k] in the
  // table's dtype.
  at::Tensor operator()(const at::Tensor& q_pos, const at::Tensor& k_pos) const;
  // rel: key - query positions, int64 [B, k] -> bias [B, heads, k] (a decode step's rows).
  at::Tensor of_relative(const at::Tensor& rel) const;
};

}  // namespace cascade::stage
