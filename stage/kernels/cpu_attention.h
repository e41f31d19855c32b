// Decode attention on the CPU: one sequence's one new token against its KV-cache slot,
// read in place. The ATen path (stage/kv_cache.cpp) spends a dozen operator calls per
// sequence and layer (narrow, repeat for GQA, mask, matmul, softmax, matmul, copy);
// a CPU decode step of a small model is mostly those calls, so this does the whole
// attention of one token in one call: scores, soft-capping, ALiBi, window, softmax and
// the weighted sum, all in float32, rounded once to the output's dtype.
// A query head's result does not depend on the thread count (heads are split, sums are
// not). Thread-safety: reentrant.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace cascade::stage {

struct CpuDecodeAttention {
  double scale = 1.0;
  int64_t window = 0;  // > 0: attend the last `window` positions only
  double softcap = 0;  // > 0: scores -> softcap * tanh(scores / softcap)
  at::Tensor alibi;    // [heads] float32 slopes: scores += slope * key position; or undefined
};

// q [heads, head_dim]; k, v [kv_heads, max_seq_len, head_dim] (one slot of the cache,
// contiguous), positions [0, len) written; out [heads, head_dim], contiguous. All of q, k,
// v, out in one dtype: float32, bfloat16 or float16. heads a multiple of kv_heads (GQA:
// query head h reads KV head h / (heads / kv_heads)). Returns false, touching nothing,
// when these do not hold (the caller then takes the ATen path).
bool cpu_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t len,
                          const CpuDecodeAttention& args, at::Tensor& out);

}  // namespace cascade::stage
