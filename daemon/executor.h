// Executor: where the coordinator's steps run. The generation loop, the scheduler and
// the benchmark talk to this interface only, so the same loop drives one process
// (LocalExecutor) or the stage processes of a plan (Cluster).
//
// submit() hands over a step (token ids [tokens] int64); next() returns the results in
// submission order: the sampled ids [result rows] int64 (a row per sequence, then per
// fork), when the step set kStepWantLogits the last-position logits [seqs, vocab]
// float32, and when it set kStepWantLogprobs the kLogprobs records (comm/message.h). A Cluster takes as
// many steps in flight as the scheduler issues (one per microbatch); LocalExecutor runs
// each step in submit(), so next() never waits.
// Thread-safety: one thread drives an Executor.
#pragma once

#include <ATen/ATen.h>

#include <deque>
#include <memory>
#include <string>

#include "comm/message.h"
#include "config/env.h"
#include "stage/runner.h"

namespace cascade::daemon {

struct StepOutput {
  comm::StepHeader header;  // of the step as submitted
  at::Tensor ids;           // [result rows] int64, -1 where a sequence was not sampled
  at::Tensor logits;        // [seqs, vocab] float32, or undefined
  at::Tensor logprobs;      // float64 [records, 4 + 2K], or undefined
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual void submit(const comm::StepHeader& h, const at::Tensor& ids) = 0;
  virtual StepOutput next() = 0;
  virtual int64_t kv_slots() const = 0;
  virtual int64_t max_seq_len() const = 0;
  // Whether decode entries may be fed (comm::SeqEntry::fed): the process that takes a
  // step's ids also samples its tokens, so it holds each sequence's last one. Then a
  // sequence's next step can be submitted before this one's result is taken.
  virtual bool feeds_sampled() const { return false; }
  // Whether the loops that drive this executor submit fed steps ahead: where it feeds
  // sampled tokens, unless CASCADE_DECODE_AHEAD=0 (a measurement switch) says not to.
  bool feeds_ahead() const { return feeds_sampled() && config::env_flag("CASCADE_DECODE_AHEAD", true); }
  // Called between steps while idle: throws when the executor can no longer run steps.
  virtual void check() {}
  // After submit(), next() or check() threw: tries to make the executor usable again
  // (stages restarted and reloaded, every KV slot empty). False when it cannot.
  virtual bool recover(const std::string& /*why*/) { return false; }
};

// The whole model in this process.
class LocalExecutor : public Executor {
 public:
  explicit LocalExecutor(std::unique_ptr<stage::Model> model) : runner_(std::move(model)) {}
  void submit(const comm::StepHeader& h, const at::Tensor& ids) override {
    at::Tensor logits = runner_.run(h, ids, 0, -1);
    stage::StepRunner::Sampled s = runner_.sample(h, logits);
    StepOutput out{h, s.ids, {}, {}};
    if (h.flags & comm::kStepWantLogits) out.logits = logits.to(at::kCPU, at::kFloat);
    if (h.flags & comm::kStepWantLogprobs) out.logprobs = s.logprobs;
    done_.push_back(std::move(out));
  }
  StepOutput next() override {
    TORCH_CHECK(!done_.empty(), "next() without a submitted step");
    StepOutput o = std::move(done_.front());
    done_.pop_front();
    return o;
  }
  bool feeds_sampled() const override { return true; }
  int64_t kv_slots() const override { return runner_.model().kv_cache().slots(); }
  int64_t max_seq_len() const override { return runner_.model().kv_cache().max_seq_len(); }

 private:
  stage::StepRunner runner_;
  std::deque<StepOutput> done_;
};

}  // namespace cascade::daemon
