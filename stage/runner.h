// StepRunner executes the stage's share of a step (DESIGN §6): it turns a StepHeader
// into a Batch, runs a segment of modules on the incoming ids or hidden states, and,
// on the stage that holds the LM head, samples each sequence's next token.
//
// Sampling state lives here, one Sampler per KV slot, created when a sequence starts
// (start_pos == 0), so a sequence's tokens depend only on its seed, prompt and logits —
// the same in one process as split across several, alone or batched. A sequence's
// forks (n > 1) get their KV prefix copied in run() and their sampler in sample().
//
// Where the runner also holds the embedding (module 0), each slot's last sampled token
// is kept where the logits are (on the GPU when one argmax picked the step's tokens
// there), so that a step whose entries are fed
// (comm::SeqEntry::fed) takes its input ids from it without a trip through the host:
// the coordinator can then issue a sequence's next step before its token returns,
// and a stage can start that step while the previous step's ids are still on their way
// to the host (begin_sample / finish_sample).
//
// Ownership: owns the Model. Thread-safety: none; one step loop drives it.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Event.h>

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "comm/message.h"
#include "stage/model.h"
#include "stage/sampler.h"

namespace cascade::stage {

class StepRunner {
 public:
  explicit StepRunner(std::unique_ptr<Model> model) : model_(std::move(model)) {}

  // Modules [begin, end) of the step. input: ids [tokens] int64 or hidden [tokens, hidden].
  // Returns hidden [tokens, hidden], or logits [seqs, vocab] when the LM head ran. From
  // module 0, a fed entry's id (a placeholder in input) is its slot's last sampled token;
  // throws where this runner has sampled none for that slot.
  at::Tensor run(const comm::StepHeader& h, const at::Tensor& input, int64_t begin, int64_t end);
  struct Sampled {
    at::Tensor ids;       // [result rows] int64 (comm::StepHeader::result_rows), -1: not sampled
    at::Tensor logprobs;  // comm's kLogprobs records, float64 [records, 4 + 2K]; [0, 4] when none
  };
  // One token per sequence and fork from the logits run() returned ([rows, vocab]: one
  // row per sequence, or per token for those that score their prompt).
  Sampled sample(const comm::StepHeader& h, const at::Tensor& logits);

  // sample() in two halves. begin_sample queues the step's argmax on the logits' device
  // (where one picks every token: plain greedy sequences only), records the tokens as
  // their slots' last (so run() of a fed step may follow at once) and starts their copy
  // to the host; finish_sample waits for that copy and does the rest, on the host (all
  // of sampling where the argmax does not apply). Steps are finished in the order they
  // were begun. finish_sample throws when the copy has not landed within `timeout_s`
  // (a device that stopped making progress).
  struct PendingSample {
    comm::StepHeader header;
    at::Tensor logits;
    at::Tensor picked;                  // [seqs] int64 on the host, arriving; undefined: picked on the host
    std::optional<c10::Event> arrived;  // recorded after picked's copy (a CUDA device)
    // Whether the tokens were picked on the device: only then may another step begin
    // before this one is finished (its fed ids are known to the device).
    bool on_device() const { return picked.defined(); }
    // True when finish_sample would not wait for the device.
    bool ready() const { return !arrived || arrived->query(); }
  };
  PendingSample begin_sample(const comm::StepHeader& h, const at::Tensor& logits);
  Sampled finish_sample(PendingSample p, double timeout_s = 300);

  Model& model() { return *model_; }
  const Model& model() const { return *model_; }

 private:
  at::Tensor feed(const comm::StepHeader& h, const at::Tensor& input);
  void keep_sampled(const std::vector<int64_t>& slots, const at::Tensor& ids, at::Device device);
  // Whether this runner holds module 0, where ids enter: only then can a step be fed,
  // so only then are sampled tokens kept.
  bool takes_ids() const { return !model_->loaded().empty() && model_->loaded().front() == 0; }

  std::unique_ptr<Model> model_;
  at::Tensor last_;                                    // [slots] int64: each slot's last sampled token
  std::vector<bool> has_last_;                         // by slot
  std::map<int64_t, Sampler> samplers_;                // by KV slot
  std::map<int64_t, std::vector<float>> prompt_tail_;  // by slot: logits of a scored prompt chunk's last token
};

Batch batch_of(const comm::StepHeader& h);

}  // namespace cascade::stage
