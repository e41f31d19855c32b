#include "stage/runner.h"

namespace cascade::stage {

Batch batch_of(const comm::StepHeader& h) {
  Batch b;
  for (const auto& s : h.seqs) b.seqs.push_back({s.slot, s.start_pos, s.n_tokens});
  return b;
}

at::Tensor StepRunner::run(const comm::StepHeader& h, const at::Tensor& input, int64_t begin, int64_t end) {
  TORCH_CHECK(h.kind == comm::StepKind::kPrefill || h.kind == comm::StepKind::kDecode, "step ", h.step_id,
              " is not a prefill or decode step");
  for (const auto& s : h.seqs) {
    TORCH_CHECK(s.slot >= 0 && s.slot < model_->kv_cache().slots(), "step ", h.step_id, ": KV slot ", s.slot,
                " is outside [0, ", model_->kv_cache().slots(), ")");
    TORCH_CHECK(s.start_pos >= 0 && s.n_tokens >= 1 && s.start_pos + s.n_tokens <= model_->kv_cache().max_seq_len(),
                "step ", h.step_id, ": positions [", s.start_pos, ", ", s.start_pos + s.n_tokens,
                ") do not fit max_seq_len ", model_->kv_cache().max_seq_len());
  }
  return model_->forward(input, batch_of(h), begin, end);
}

at::Tensor StepRunner::sample(const comm::StepHeader& h, const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == static_cast<int64_t>(h.seqs.size()), "step ", h.step_id,
              ": logits ", logits.sizes(), " do not match ", h.seqs.size(), " sequences");
  const at::Tensor cpu = logits.to(at::kCPU, at::kFloat);
  at::Tensor out = at::empty({static_cast<int64_t>(h.seqs.size())}, at::kLong);
  for (size_t i = 0; i < h.seqs.size(); ++i) {
    const comm::SeqEntry& s = h.seqs[i];
    if (s.start_pos == 0) samplers_.erase(s.slot);  // a new sequence in this slot
    if (!s.sample) {
      out[static_cast<int64_t>(i)] = -1;
      continue;
    }
    auto it = samplers_.find(s.slot);
    if (it == samplers_.end()) {
      it = samplers_.emplace(s.slot, Sampler(SamplingParams{s.temperature, s.top_k, s.top_p, s.seed})).first;
    }
    out[static_cast<int64_t>(i)] = it->second.next(cpu[static_cast<int64_t>(i)]);
  }
  return out;
}

}  // namespace cascade::stage
