// The ends of a decoder stack, as toolkit Modules: the token embedding (optionally
// scaled, optionally plus learned absolute positions) and the LM head (optionally
// soft-capped logits). Immutable after load; one step loop drives them.
#pragma once

#include <ATen/ATen.h>

#include "stage/family.h"

namespace cascade::stage {

// ids [tokens] int64 -> [tokens, hidden].
class Embedding : public Module {
 public:
  // `positions`: learned absolute positions [max_positions, hidden] (GPT-2's wpe), or
  // undefined. `scale` != 1: the embedding is multiplied by it in the compute dtype
  // (Gemma's sqrt(hidden)).
  Embedding(at::Tensor tokens, at::Tensor positions = {}, double scale = 1.0);
  at::Tensor forward(const at::Tensor& ids, StepContext& ctx) override;

 private:
  at::Tensor tokens_, positions_;
  double scale_;
};

// hidden [tokens, hidden] -> logits [seqs, vocab] at each sequence's last token (the
// ones sampled), or [rows, vocab] with every token of the sequences that ask for
// all_logits (Batch::logit_rows: a prompt's log-probabilities).
class LmHead : public Module {
 public:
  // w [vocab, hidden]; softcap > 0: logits -> softcap * tanh(logits / softcap).
  explicit LmHead(at::Tensor w, double softcap = 0) : w_(std::move(w)), softcap_(softcap) {}
  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override;

 private:
  at::Tensor w_;
  double softcap_;
};

}  // namespace cascade::stage
