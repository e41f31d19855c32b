#include "daemon/executor.h"

#include <utility>

namespace cascade::daemon {

LocalExecutor::LocalExecutor(std::unique_ptr<stage::Model> model, double step_timeout)
    : runner_(std::move(model)), step_timeout_(step_timeout) {}

void LocalExecutor::submit(const comm::StepHeader& h, const at::Tensor& ids) {
  at::Tensor logits = runner_.run(h, ids, 0, -1);
  runner_.model().hop_sent();  // a streamed module's copy may start
  Pending p{runner_.begin_sample(h, logits), std::nullopt, std::nullopt};
  if (p.sample.ready()) p.picked = std::chrono::steady_clock::now();  // the CPU picked them now
  if (!p.sample.on_device()) {  // sampled on the host: now, after the steps before it
    settle();
    p.done = finish(std::move(p.sample));
  }
  pending_.push_back(std::move(p));
}

StepOutput LocalExecutor::next() {
  TORCH_CHECK(!pending_.empty(), "next() without a submitted step");
  Pending p = std::move(pending_.front());
  pending_.pop_front();
  StepOutput out = p.done ? std::move(*p.done) : finish(std::move(p.sample));
  if (p.picked) out.ready = *p.picked;
  return out;
}

bool LocalExecutor::overlaps_steps() const { return runner_.model().device().is_cuda(); }

int64_t LocalExecutor::kv_slots() const { return runner_.model().kv_cache().slots(); }
int64_t LocalExecutor::max_seq_len() const { return runner_.model().kv_cache().max_seq_len(); }

StepOutput LocalExecutor::finish(stage::StepRunner::PendingSample p) {
  const comm::StepHeader h = p.header;
  const at::Tensor logits = p.logits;
  stage::StepRunner::Sampled s = runner_.finish_sample(std::move(p), step_timeout_);
  StepOutput out{h, s.ids, {}, {}, std::chrono::steady_clock::now()};
  if (h.flags & comm::kStepWantLogits) out.logits = logits.to(at::kCPU, at::kFloat);
  if (h.flags & comm::kStepWantLogprobs) out.logprobs = s.logprobs;
  return out;
}

void LocalExecutor::settle() {
  for (auto& q : pending_)
    if (!q.done) q.done = finish(std::move(q.sample));
}

}  // namespace cascade::daemon
