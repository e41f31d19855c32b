// StepRunner executes the stage's share of a step (DESIGN §6): it turns a StepHeader
// into a Batch, runs a segment of modules on the incoming ids or hidden states, and,
// on the stage that holds the LM head, samples each sequence's next token.
//
// Sampling state lives here, one Sampler per KV slot, created when a sequence starts
// (start_pos == 0), so a sequence's tokens depend only on its seed, prompt and logits —
// the same in one process as split across several, alone or batched. A sequence's
// forks (n > 1) get their KV prefix copied in run() and their sampler in sample().
//
// Ownership: owns the Model. Thread-safety: none; one step loop drives it.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <vector>

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
  struct Sampled {
    at::Tensor ids;       // [result rows] int64 (comm::StepHeader::result_rows), -1: not sampled
    at::Tensor logprobs;  // comm's kLogprobs records, float64 [records, 4 + 2K]; [0, 4] when none
  };
  // One token per sequence and fork from the logits run() returned ([rows, vocab]: one
  // row per sequence, or per token for those that score their prompt).
  Sampled sample(const comm::StepHeader& h, const at::Tensor& logits);

  Model& model() { return *model_; }
  const Model& model() const { return *model_; }

 private:
  std::unique_ptr<Model> model_;
  std::map<int64_t, Sampler> samplers_;                // by KV slot
  std::map<int64_t, std::vector<float>> prompt_tail_;  // by slot: logits of a scored prompt chunk's last token
};

Batch batch_of(const comm::StepHeader& h);

}  // namespace cascade::stage
