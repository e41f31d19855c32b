// StepRunner executes the stage's share of a step (DESIGN §6): it turns a StepHeader
// into a Batch, runs a segment of modules on the incoming ids or hidden states, and,
// on the stage that holds the LM head, samples each sequence's next token.
//
// Sampling state lives here, one Sampler per KV slot, created when a sequence starts
// (start_pos == 0), so a sequence's tokens depend only on its seed and its logits —
// the same in one process as split across several, alone or batched.
//
// Ownership: owns the Model. Thread-safety: none; one step loop drives it.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>

#include "comm/message.h"
#include "stage/model.h"
#include "stage/sampler.h"

namespace cascade::stage {

class StepRunner {
 public:
  explicit StepRunner(std::unique_ptr<Model> model) : model_(std::move(model)) {}

  // Modules [begin, end) of the step. input: ids [tokens] int64 or hidden [tokens, hidden].
  // Returns hidden [tokens, hidden], or logits [seqs, vocab] when the LM head ran.
  at::Tensor run(const comm::StepHeader& h, const at::Tensor& input, int64_t begin, int64_t end);
  // One token per sequence from logits [seqs, vocab]: [seqs] int64, -1 where the
  // sequence's entry says not to sample (a prefill chunk before the prompt's end).
  at::Tensor sample(const comm::StepHeader& h, const at::Tensor& logits);

  Model& model() { return *model_; }
  const Model& model() const { return *model_; }

 private:
  std::unique_ptr<Model> model_;
  std::map<int64_t, Sampler> samplers_;  // by KV slot
};

Batch batch_of(const comm::StepHeader& h);

}  // namespace cascade::stage
