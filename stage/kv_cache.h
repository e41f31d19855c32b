// The KV cache of one stage: for each decoder layer the stage runs, K and V tensors
// [slots, kv_heads, max_seq_len, head_dim] on the stage's compute device, allocated
// once at start (DESIGN §5). A slot belongs to one sequence at a time; the
// coordinator hands slots out and reuses them, so nothing here is ever cleared:
// positions past a sequence's length are simply never read.
//
// Thread-safety: none; a stage's step loop is its only user.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <vector>

#include "stage/batch.h"

namespace cascade::stage {

class KvCache {
 public:
  KvCache() = default;
  KvCache(const std::vector<int64_t>& layers, int64_t slots, int64_t kv_heads, int64_t max_seq_len, int64_t head_dim,
          at::ScalarType dtype, at::Device device);

  int64_t slots() const { return slots_; }
  int64_t max_seq_len() const { return max_seq_len_; }
  uint64_t bytes() const;  // K and V of every layer held

  // Writes this step's keys/values for every sequence of the batch into its slot, then
  // attends each sequence's queries to its cached prefix (causal, optional sliding
  // window). q [tokens, heads, head_dim], k/v [tokens, kv_heads, head_dim];
  // returns [tokens, heads * head_dim]. window 0 = full attention.
  at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Batch& batch,
                    double scale, int64_t window);

 private:
  struct Layer {
    at::Tensor k;  // [slots, kv_heads, max_seq_len, head_dim]
    at::Tensor v;
  };
  std::map<int64_t, Layer> layers_;
  int64_t slots_ = 0;
  int64_t max_seq_len_ = 0;
};

}  // namespace cascade::stage
