// Attention on the CPU against a sequence's KV-cache slot, read in place: one new token
// (decode) or a prompt's tokens. The ATen path (stage/kv_cache.cpp) spends a dozen
// operator calls per sequence and layer (narrow, repeat for GQA, mask, matmul, softmax,
// matmul, copy), and for a prompt materializes and masks every [query, key] score in
// several passes; a CPU decode step of a small model is mostly those calls, and at 128
// tokens they were a quarter of a prompt's layers. These do a sequence's whole attention
// in one call: scores, soft-capping, ALiBi, window, softmax and the weighted sum, all in
// float32, rounded once to the output's dtype.
// A query head's result does not depend on the thread count (heads are split, sums are
// not). Thread-safety: reentrant.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace cascade::stage {

struct CpuAttention {
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
                          const CpuAttention& args, at::Tensor& out);

// A prompt's (or a prompt chunk's) n tokens at positions [start, start + n): q [n,
// heads, head_dim] (head_dim contiguous); k, v as above with positions [0, start + n)
// written, the n new ones included; out [n, heads, head_dim], contiguous. Query t
// attends keys [0, start + t], or the last `window` of them. The arithmetic is
// cpu_decode_attention's but for the scores' dot products, which are cpu_gemv's kernels
// (a block of up to 64 queries against the keys they see, cpu_gemv.h): so query t's
// result does not depend on n or on the other queries. Returns false, touching nothing, where the shapes
// do not hold (as cpu_decode_attention).
bool cpu_prompt_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start,
                          const CpuAttention& args, at::Tensor& out);

}  // namespace cascade::stage
