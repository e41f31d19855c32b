// Executor: where the coordinator's steps run. The generation loop, the scheduler and
// the benchmark talk to this interface only, so the same loop drives one process
// (LocalExecutor) or the stage processes of a plan (Cluster).
//
// submit() hands over a step (token ids [tokens] int64); next() returns the results in
// submission order: the sampled ids [result rows] int64 (a row per sequence, then per
// fork), when the step set kStepWantLogits the last-position logits [seqs, vocab]
// float32, and when it set kStepWantLogprobs the kLogprobs records (comm/message.h). A Cluster takes as
// many steps in flight as the scheduler issues (one per microbatch); LocalExecutor runs
// each step in submit(), and next() waits at most for its tokens' copy to the host.
// Thread-safety: one thread drives an Executor.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
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
  // When its tokens were ready: where a step runs in submit() (LocalExecutor on the
  // CPU), before the steps submitted after it ran, not when next() returned it. Decode
  // rates are timed from the prefill's.
  std::chrono::steady_clock::time_point ready;
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
  // Whether a step submitted before the last one's tokens are taken runs while they
  // travel back (true but where submit() itself runs the whole step, tokens included).
  virtual bool overlaps_steps() const { return true; }
  // Whether the loops that drive this executor submit fed steps ahead: where it feeds
  // sampled tokens and that overlaps steps, unless CASCADE_DECODE_AHEAD=0 (a measurement
  // switch) says not to.
  bool feeds_ahead() const {
    return feeds_sampled() && overlaps_steps() && config::env_flag("CASCADE_DECODE_AHEAD", true);
  }
  // Called between steps while idle: throws when the executor can no longer run steps.
  virtual void check() {}
  // After submit(), next() or check() threw: tries to make the executor usable again
  // (stages restarted and reloaded, every KV slot empty). False when it cannot.
  virtual bool recover(const std::string& /*why*/) { return false; }
};

// The whole model in this process (`generate --model`, or a plan of one stage). A step
// runs in submit(). Where the device picked its tokens (StepRunner::begin_sample), they
// are read back only in next(): a fed step submitted meanwhile is then queued on the
// device while they travel, as a stage overlaps steps. Steps are finished in order.
class LocalExecutor : public Executor {
 public:
  // `step_timeout`: seconds next() waits for a step's tokens from the device.
  explicit LocalExecutor(std::unique_ptr<stage::Model> model, double step_timeout = 300);
  void submit(const comm::StepHeader& h, const at::Tensor& ids) override;
  StepOutput next() override;
  bool feeds_sampled() const override { return true; }
  // On the CPU, submit() computes the step and picks its tokens: a step submitted ahead
  // would run before they are handed over, overlapping nothing and handing them over a
  // step late. (LocalExecutor runs one-process `generate`; `serve` drives stage
  // processes, where a step ahead does overlap.)
  bool overlaps_steps() const override;
  int64_t kv_slots() const override;
  int64_t max_seq_len() const override;

 private:
  struct Pending {
    stage::StepRunner::PendingSample sample;
    std::optional<StepOutput> done;  // finished already
    // When its tokens were picked, where that needed no wait for a device (the CPU).
    std::optional<std::chrono::steady_clock::time_point> picked;
  };
  StepOutput finish(stage::StepRunner::PendingSample p);
  void settle();  // finishes every step still waiting for its tokens, in order

  stage::StepRunner runner_;
  double step_timeout_;
  std::deque<Pending> pending_;
};

}  // namespace cascade::daemon
