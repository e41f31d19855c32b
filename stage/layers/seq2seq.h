// Building blocks for encoder-decoder models (T5), on the single route every step
// takes (DESIGN §6): one hidden tensor [tokens, hidden] travels through the encoder's
// modules and then the decoder's, carrying both kinds of rows.
//
// A sequence's first prefill carries its whole encoder input, positions [0, context)
// (SeqSlice::context), followed by its first decoder tokens (the start token); later
// steps carry decoder tokens only. Encoder modules work on the encoder rows and pass the
// rest through; decoder layers store their cross-attention keys and values for the
// encoder rows at the slot's positions [0, context) of their KV cache (so one slot holds
// the encoder's keys, then the decoder's own, within max_seq_len), and work on the
// decoder rows. Prefill steps need host-side bookkeeping (Seq2SeqRows); decode steps
// on a GPU (DecodeIndex with its context) run batched with none, so CUDA graphs capture
// them.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "stage/batch.h"
#include "stage/family.h"

namespace cascade::stage {

struct Seq2SeqRows {
  struct Seq {
    int64_t slot = 0;
    int64_t context = 0;               // the sequence's encoder positions
    int64_t enc_row = 0, enc_len = 0;  // its rows among the step's encoder rows (enc_len 0: none this step)
    int64_t dec_row = 0, dec_len = 0;  // its rows among the step's decoder rows
    int64_t dec_pos = 0;               // position of its first decoder token in the step
  };
  std::vector<Seq> seqs;  // in batch order
  at::Tensor enc, dec;    // [encoder tokens], [decoder tokens] int64: their rows in the step, on the device
  int64_t enc_tokens = 0, dec_tokens = 0;

  // Throws (naming the slot) when a sequence has no context or its encoder input is not
  // whole in one step.
  static Seq2SeqRows of(const Batch& b, at::Device device);
  // The step's rows, built once per step (and device) and kept in ctx for the modules after.
  static const Seq2SeqRows& of(StepContext& ctx, at::Device device);
};

// T5's attention: softmax(q k^T + bias) v without 1/sqrt(d) scaling, the softmax in
// float32, masked scores at the lowest float. q [heads, q, d], k/v [heads, k, d]; bias
// [heads, q, k] or undefined; mask [q, k] (true = may attend) or undefined. Returns
// [q, heads * d].
at::Tensor biased_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                            const at::Tensor& mask);

// The same for a decode step of every sequence at once, with no host work (CUDA graphs
// capture it): q [B, heads, d], keys/vals [B, heads, span, d], `allowed` [B, span] bool,
// bias [B, heads, span] or undefined. Returns [B, heads * d]. The lowest float rather
// than -inf, as transformers masks, keeps a padding row that may attend nowhere finite.
at::Tensor biased_decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& vals,
                                   const at::Tensor& bias, const at::Tensor& allowed);

// x with its rows `rows` replaced by `values` ([rows, hidden]); x itself when the rows
// are all of it, in order.
at::Tensor with_rows(const at::Tensor& x, const at::Tensor& rows, const at::Tensor& values);

}  // namespace cascade::stage
