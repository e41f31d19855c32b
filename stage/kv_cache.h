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
#include <utility>
#include <vector>

#include "stage/batch.h"

namespace cascade::stage {

// The device-side indices of a decode step (every sequence adds exactly one token),
// built once per step and shared by all its layers, so that the batched decode path
// needs no host work per layer and can be captured in a CUDA graph.
struct DecodeIndex {
  at::Tensor slots;  // [seqs] int64 on the cache's device
  at::Tensor pos;    // [seqs] int64: the position of each sequence's new token
  int64_t span = 0;  // cache positions read, [0, span): at least every pos + 1
  // [seqs] int64: each sequence's encoder positions (SeqSlice::context) when the batch is
  // an encoder-decoder model's; undefined otherwise.
  at::Tensor context;
  bool defined() const { return slots.defined(); }
};

// Where each row of a step lands in the cache, for steps that are not pure decode steps
// (a prompt, or prompts mixed with decode tokens): built once per step on the cache's
// device and shared by all its layers.
struct RowIndex {
  at::Tensor slots;  // [tokens] int64: each row's slot
  at::Tensor pos;    // [tokens] int64: each row's position
  bool defined() const { return slots.defined(); }
};

// What some families do to attention scores before the softmax (both off by default).
struct ScoreMods {
  double softcap = 0;  // scores -> softcap * tanh(scores / softcap) (gemma2)
  at::Tensor alibi;    // [heads] float32 slopes: scores += slope * key position (bloom)
  bool any() const { return softcap > 0 || alibi.defined(); }
};

class KvCache {
 public:
  KvCache() = default;
  KvCache(const std::vector<int64_t>& layers, int64_t slots, int64_t kv_heads, int64_t max_seq_len, int64_t head_dim,
          at::ScalarType dtype, at::Device device);

  // `spare_slot` adds one slot past `slots` that no sequence owns: CUDA graphs pad a
  // batch up to its bucket with rows that write there.
  KvCache(const std::vector<int64_t>& layers, int64_t slots, int64_t kv_heads, int64_t max_seq_len, int64_t head_dim,
          at::ScalarType dtype, at::Device device, bool spare_slot);

  int64_t slots() const { return slots_; }
  int64_t spare_slot() const { return spare_ ? slots_ : -1; }
  int64_t max_seq_len() const { return max_seq_len_; }
  uint64_t bytes() const;  // K and V of every layer held

  // Writes this step's keys/values for every sequence of the batch into its slot, then
  // attends each sequence's queries to its cached prefix (causal, optional sliding
  // window). q [tokens, heads, head_dim], k/v [tokens, kv_heads, head_dim];
  // returns [tokens, heads * head_dim]. window 0 = full attention. On the CPU each
  // sequence is one call, float32 throughout: cpu_decode_attention for a single decode
  // token, cpu_prompt_attention for more; other devices go through ATen.
  at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Batch& batch,
                    double scale, int64_t window, const ScoreMods& mods = {});

  // A decode step for every sequence at once. On the GPU two kernels write the new K/V
  // into the slots and attend in place (stage/kernels/attention_kernels.h); elsewhere one
  // scatter into the cache and one batched attention over positions [0, d.span) masked
  // to each sequence's length.
  // q [seqs, heads, head_dim], k/v [seqs, kv_heads, head_dim]; returns [seqs, heads * head_dim].
  at::Tensor attend_decode(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const DecodeIndex& d, double scale, int64_t window, const ScoreMods& mods = {});

  // attend_decode with RoPE folded into the store: q and k arrive unrotated, cos/sin
  // [seqs, head_dim] in q's dtype; one kernel rotates q and k, writes K/V and attends
  // (decode_rope_attention; where it declines, one kernel rotates and stores and one
  // attends). Undefined where those kernels do not take the step (not a GPU cache, a
  // partial rotary, a head size they lack), before anything is written: the caller then
  // rotates q and k itself and calls attend_decode.
  at::Tensor attend_decode_rotary(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cos, const at::Tensor& sin, const DecodeIndex& d, double scale,
                                  int64_t window, const ScoreMods& mods = {});

  // attend() with RoPE folded into the store, as attend_decode_rotary: one kernel rotates
  // q and k of every row and writes K/V at `rows`; then each sequence attends as in
  // attend(). cos/sin [tokens, head_dim] in q's dtype. Undefined, before anything is
  // written, where that kernel does not take the step.
  at::Tensor attend_rotary(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& cos, const at::Tensor& sin, const RowIndex& rows, const Batch& batch,
                           double scale, int64_t window, const ScoreMods& mods = {});

  // For layers that attend by themselves (T5's: a relative bias on the scores, and
  // cross-attention keys in the slot's first positions, stage/layers/seq2seq.h):
  // store() writes k/v [n, kv_heads, head_dim] at positions [pos, pos + n) of `slot`;
  // read() returns views [kv_heads, to - from, head_dim] of positions [from, to).
  void store(int64_t layer, int64_t slot, int64_t pos, const at::Tensor& k, const at::Tensor& v);
  std::pair<at::Tensor, at::Tensor> read(int64_t layer, int64_t slot, int64_t from, int64_t to);

  // The batched decode step's halves, for layers that attend by themselves: writes the
  // new k/v [seqs, kv_heads, head_dim] at (slot, pos) of each sequence, and reads
  // positions [0, d.span) of each sequence's slot: [seqs, kv_heads, span, head_dim].
  void store_decode(int64_t layer, const DecodeIndex& d, const at::Tensor& k, const at::Tensor& v);
  std::pair<at::Tensor, at::Tensor> read_decode(int64_t layer, const DecodeIndex& d);

  // Copies positions [0, n) of `layer`'s keys and values from slot `from` to slot `to`
  // (n > 1 sequences that share a prompt: stage/runner.h).
  void copy_prefix(int64_t layer, int64_t from, int64_t to, int64_t n);
  bool has_layer(int64_t layer) const { return layers_.count(layer) != 0; }

  // The DecodeIndex of `batch` on `device`, or an undefined one when some sequence adds
  // more than one token. Checks slots and positions; span 0 = the longest sequence.
  DecodeIndex decode_index(const Batch& batch, at::Device device, int64_t span = 0) const;
  // The RowIndex of `batch` on `device` (one host-to-device copy). Checks slots and
  // positions as store() does.
  RowIndex row_index(const Batch& batch, at::Device device) const;

 private:
  struct Layer {
    at::Tensor k;  // [slots, kv_heads, max_seq_len, head_dim]
    at::Tensor v;
  };
  Layer& layer(int64_t l);  // throws naming a layer this stage does not hold
  // attend()'s second half: each sequence's queries against its slot, K/V already stored.
  at::Tensor attend_stored(int64_t layer, const at::Tensor& q, const Batch& batch, double scale, int64_t window,
                           const ScoreMods& mods);
  void check_span(int64_t slot, int64_t pos, int64_t n) const;  // throws unless [pos, pos + n) fits the slot
  std::map<int64_t, Layer> layers_;
  at::Tensor counters_;  // [2 * rows * kv_heads] int32 zeros on a GPU: the decode kernel's split counters
  int64_t slots_ = 0;
  int64_t max_seq_len_ = 0;
  bool spare_ = false;
};

}  // namespace cascade::stage
