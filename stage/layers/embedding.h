// The ends of a decoder stack, as toolkit Modules: the token embedding (optionally
// scaled, optionally plus learned absolute positions, optionally normed) and the LM head (optionally
// soft-capped logits). Immutable after load; one step loop drives them.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "stage/family.h"
#include "stage/layers/norm.h"

namespace cascade::stage {

// ids [tokens] int64 -> [tokens, hidden].
class Embedding : public Module {
 public:
  // `positions`: learned absolute positions [max_positions, hidden] (GPT-2's wpe), or
  // undefined. `scale` != 1: the embedding is multiplied by it in the compute dtype
  // (Gemma's sqrt(hidden)). `norm`: applied last (Bloom's word_embeddings_layernorm).
  Embedding(at::Tensor tokens, at::Tensor positions = {}, double scale = 1.0, std::optional<Norm> norm = {});
  at::Tensor forward(const at::Tensor& ids, StepContext& ctx) override;

 private:
  at::Tensor embed(const at::Tensor& ids, StepContext& ctx) const;
  at::Tensor tokens_, positions_;
  double scale_;
  std::optional<Norm> norm_;
};

// hidden [tokens, hidden] -> logits [seqs, vocab] at each sequence's last token (the
// ones sampled), or [rows, vocab] with every token of the sequences that ask for
// all_logits (Batch::logit_rows: a prompt's log-probabilities).
class LmHead : public Module {
 public:
  // w [vocab, hidden]; softcap > 0: logits -> softcap * tanh(logits / softcap);
  // input_scale != 1: the hidden states are multiplied by it first (T5's tied head).
  explicit LmHead(at::Tensor w, double softcap = 0, double input_scale = 1.0)
      : w_(std::move(w)), softcap_(softcap), input_scale_(input_scale) {}
  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override;

 private:
  at::Tensor w_;
  double softcap_, input_scale_;
};

}  // namespace cascade::stage
