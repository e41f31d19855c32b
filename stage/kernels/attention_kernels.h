// Decode attention over the KV cache in place (stage/kernels/attention_kernels.cu): the
// step's new keys and values are written into their slots, and every sequence's query
// attends to its cached prefix, reading K and V where they lie; one launch for both
// (with RoPE: decode_rope_attention), or one each.
// The ATen path this replaces gathered each sequence's cache (index_select), built a
// mask and ran SDPA: about ten kernels per layer and a copy of the cache per step.
//
// Both return false / an undefined tensor where they do not apply (no CUDA kernels in
// this build, a CPU cache, an unsupported head_dim or GQA group); the caller then takes
// the ATen path. Plain functions; they queue on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace cascade::stage {

// What decode_attention needs besides the tensors (see stage/kv_cache.h ScoreMods).
struct DecodeAttentionArgs {
  int64_t span = 0;    // keys [0, span) may be read; every pos < span
  double scale = 0;    // multiplies q.k
  int64_t window = 0;  // 0 = full attention
  double softcap = 0;  // 0 = off
  at::Tensor slopes;   // [heads] float32 ALiBi slopes, or undefined
};

// k/v [B, kv_heads, D] (rows may be strided) into k_cache/v_cache [rows, kv_heads,
// max_seq, D] at (slots[b], :, pos[b]); slots/pos [B] int64 on the cache's device.
bool decode_store_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
                     const at::Tensor& slots, const at::Tensor& pos);

// decode_store_kv with RoPE (rotate-half) in the same launch: q [B, heads, D] and k
// (heads packed, rows possibly strided) rotated by cos/sin [B, D] in their dtype, k on
// its way into the cache. Returns q rotated, [B, heads, D] contiguous; undefined where it
// does not apply, and then nothing was written.
at::Tensor decode_rope_store_kv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                                const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                                const at::Tensor& slots, const at::Tensor& pos);

// Whether decode_attention takes these (checked before anything is written).
bool decode_attention_applies(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const DecodeAttentionArgs& args, const at::Tensor& counters);

// q [B, heads, D] -> [B, heads, D]: softmax(q k^T * scale (+ mods), masked to keys
// [pos - window + 1, pos]) v per sequence. `counters` [>= B * kv_heads] int32 zeros,
// owned by the cache and left zeroed.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& slots, const at::Tensor& pos, const DecodeAttentionArgs& args,
                            at::Tensor& counters);

// decode_rope_store_kv and decode_attention in one launch: the block that attends
// position pos[b] writes the rotated key and the value, and q is rotated in registers, so
// the step's keys are in the cache when it returns and no rotated q is written. Undefined
// where either does not apply (then nothing was written), or where
// CASCADE_FUSED_ATTENTION is "0" (the switch for measuring the fusion); the caller then
// takes the two launches.
at::Tensor decode_rope_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                                 const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                                 const at::Tensor& slots, const at::Tensor& pos, const DecodeAttentionArgs& args,
                                 at::Tensor& counters);

}  // namespace cascade::stage
