#include "stage/runner.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <thread>

#include "config/env.h"

namespace cascade::stage {

Batch batch_of(const comm::StepHeader& h) {
  Batch b;
  for (const auto& s : h.seqs)
    b.seqs.push_back({s.slot, s.start_pos, s.n_tokens, s.all_logits(), s.seq_len, s.context});
  return b;
}

at::Tensor StepRunner::run(const comm::StepHeader& h, const at::Tensor& input, int64_t begin, int64_t end) {
  TORCH_CHECK(h.kind == comm::StepKind::kPrefill || h.kind == comm::StepKind::kDecode, "step ", h.step_id,
              " is not a prefill or decode step");
  const int64_t slots = model_->kv_cache().slots();
  for (const auto& s : h.seqs) {
    TORCH_CHECK(s.slot >= 0 && s.slot < slots, "step ", h.step_id, ": KV slot ", s.slot, " is outside [0, ", slots,
                ")");
    TORCH_CHECK(s.start_pos >= 0 && s.n_tokens >= 1 && s.start_pos + s.n_tokens <= model_->kv_cache().max_seq_len(),
                "step ", h.step_id, ": positions [", s.start_pos, ", ", s.start_pos + s.n_tokens,
                ") do not fit max_seq_len ", model_->kv_cache().max_seq_len());
    const bool seq2seq = model_->config().encoder_decoder();
    TORCH_CHECK(seq2seq ? s.context >= 1 : s.context == 0, "step ", h.step_id, ": slot ", s.slot, " has context ",
                s.context,
                seq2seq ? ", but an encoder-decoder model needs its encoder input (context >= 1)"
                        : ", but a decoder-only model has no encoder input");
    for (const auto& f : s.forks)
      TORCH_CHECK(f.first >= 0 && f.first < slots && f.first != s.slot, "step ", h.step_id, ": fork slot ", f.first,
                  " of slot ", s.slot, " is not another slot in [0, ", slots, ")");
  }
  // Fed entries concern the ids, which enter at module 0; later hops get hidden states.
  const bool fed =
      begin == 0 && std::any_of(h.seqs.begin(), h.seqs.end(), [](const comm::SeqEntry& s) { return s.fed; });
  at::Tensor out = model_->forward(fed ? feed(h, input) : input, batch_of(h), begin, end);
  for (const auto& s : h.seqs)
    for (const auto& f : s.forks) model_->copy_kv_prefix(s.slot, f.first, s.start_pos + s.n_tokens, begin, end);
  return out;
}

// The step's ids with each fed entry's token taken from last_, on last_'s device. The
// other entries' ids are checked here, on the host (Model::forward checks only ids on
// the host, and the result is on the device where the tokens were picked).
at::Tensor StepRunner::feed(const comm::StepHeader& h, const at::Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kLong && input.dim() == 1, "step ", h.step_id,
              " feeds sampled tokens, but its input is not token ids [tokens] int64");
  std::vector<int64_t> rows, slots;
  int64_t tok = 0;
  for (const auto& s : h.seqs) {
    if (s.fed) {
      const bool kept = s.slot < static_cast<int64_t>(has_last_.size()) && has_last_[s.slot];
      TORCH_CHECK(kept, "step ", h.step_id, ": slot ", s.slot,
                  " is fed its last sampled token, but this stage has sampled none for it");
      rows.push_back(tok);
      slots.push_back(s.slot);
    }
    tok += s.n_tokens;
  }
  const at::Device dev = last_.device();
  const at::Tensor picked = last_.index_select(0, at::tensor(slots, at::kLong).to(dev, /*non_blocking=*/true));
  if (static_cast<int64_t>(rows.size()) == tok) return picked;  // every row fed (a decode step)
  const at::Tensor ids = input.cpu();
  model_->check_ids(ids, rows);
  at::Tensor out = ids.to(dev, /*non_blocking=*/true);
  out.index_copy_(0, at::tensor(rows, at::kLong).to(dev, /*non_blocking=*/true), picked);
  return out;
}

// Records ids[i] ([n] int64, any device) as the last sampled token of slots[i], keeping
// them on `device` (the logits').
void StepRunner::keep_sampled(const std::vector<int64_t>& slots, const at::Tensor& ids, at::Device device) {
  if (slots.empty()) return;
  if (!last_.defined() || last_.device() != device) {
    const int64_t n = model_->kv_cache().slots();
    last_ = at::full({n}, -1, at::TensorOptions().dtype(at::kLong).device(device));
    has_last_.assign(static_cast<size_t>(n), false);
  }
  for (int64_t s : slots) has_last_[static_cast<size_t>(s)] = true;
  last_.index_copy_(0, at::tensor(slots, at::kLong).to(device, /*non_blocking=*/true),
                    ids.to(device, /*non_blocking=*/true));
}

namespace {

// kLogprobs records (comm/message.h), width 4 + 2K.
class Records {
 public:
  explicit Records(int64_t k) : k_(k) {}
  void add(int64_t row, int64_t pos, const TokenScore& s) {
    const size_t at = v_.size();
    v_.resize(at + static_cast<size_t>(4 + 2 * k_), 0.0);
    v_[at] = static_cast<double>(row);
    v_[at + 1] = static_cast<double>(pos);
    v_[at + 2] = static_cast<double>(s.token);
    v_[at + 3] = s.logprob;
    for (int64_t i = 0; i < k_; ++i) {
      const bool has = i < static_cast<int64_t>(s.top.size());
      v_[at + 4 + 2 * i] = has ? static_cast<double>(s.top[i].first) : -1.0;
      v_[at + 5 + 2 * i] = has ? s.top[i].second : 0.0;
    }
  }
  at::Tensor tensor() const {
    const int64_t w = 4 + 2 * k_;
    return at::tensor(v_, at::kDouble).reshape({static_cast<int64_t>(v_.size()) / w, w});
  }

 private:
  int64_t k_;
  std::vector<double> v_;
};

// Whether one argmax over the batch's logits on their device picks every token of
// the step: each sampling sequence is plain greedy, without logprobs or forks, and
// none scores its prompt. Then [seqs] ids cross to the host instead of [rows, vocab]
// logits, and no per-row host work is left. CASCADE_SAMPLE_ON_HOST=1 turns it off
// (a measurement switch: the host path gives the same tokens).
bool batch_argmax_applies(const comm::StepHeader& h) {
  static const bool host = config::env_flag("CASCADE_SAMPLE_ON_HOST", false);
  if (host) return false;
  for (const auto& s : h.seqs) {
    const SamplingParams& p = s.sampling;
    if (p.prompt_logprobs && p.logprobs >= 0) return false;
    if (s.sample && (!Sampler::plain_greedy(p) || p.logprobs >= 0 || !s.forks.empty())) return false;
  }
  return true;
}

// The argmax of each sequence's last logits row ([seqs] int64 on the logits' device);
// `last`: those rows (Batch::last_logit_rows).
at::Tensor batch_argmax(const at::Tensor& logits, const std::vector<int64_t>& last) {
  const bool one_row_each = logits.size(0) == static_cast<int64_t>(last.size());
  const at::Tensor rows =
      one_row_each ? logits
                   : logits.index_select(0, at::tensor(last, at::kLong).to(logits.device(), /*non_blocking=*/true));
  return rows.argmax(1);
}

}  // namespace

StepRunner::Sampled StepRunner::sample(const comm::StepHeader& h, const at::Tensor& logits) {
  return finish_sample(begin_sample(h, logits));
}

StepRunner::PendingSample StepRunner::begin_sample(const comm::StepHeader& h, const at::Tensor& logits) {
  const Batch b = batch_of(h);
  const std::vector<int64_t> last_rows = b.last_logit_rows();  // [seqs]
  const int64_t rows = last_rows.empty() ? 0 : last_rows.back() + 1;
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == rows, "step ", h.step_id, ": logits ", logits.sizes(),
              " do not match the ", rows, " rows of ", h.seqs.size(), " sequences");
  TORCH_CHECK(h.ids.empty() || static_cast<int64_t>(h.ids.size()) == b.total_tokens(), "step ", h.step_id, ": ",
              h.ids.size(), " token ids for ", b.total_tokens(), " tokens");
  PendingSample p{h, logits, {}, std::nullopt};
  if (!batch_argmax_applies(h)) return p;
  const at::Tensor picked = batch_argmax(logits, last_rows);  // [seqs] on the logits' device
  std::vector<int64_t> slots, sampled;                        // sampled: their rows of picked
  for (size_t i = 0; i < h.seqs.size(); ++i) {
    if (!h.seqs[i].sample) continue;
    slots.push_back(h.seqs[i].slot);
    sampled.push_back(static_cast<int64_t>(i));
  }
  if (takes_ids())
    keep_sampled(
        slots,
        sampled.size() == h.seqs.size()
            ? picked
            : picked.index_select(0, at::tensor(sampled, at::kLong).to(picked.device(), /*non_blocking=*/true)),
        logits.device());
  if (!picked.is_cuda()) {
    p.picked = picked.contiguous();
    return p;
  }
  p.picked = at::empty(picked.sizes(), picked.options().device(at::kCPU).pinned_memory(true));
  p.picked.copy_(picked, /*non_blocking=*/true);
  p.arrived.emplace(picked.device().type());
  p.arrived->record(c10::impl::getDeviceGuardImpl(picked.device().type())->getStream(picked.device()));
  return p;
}

StepRunner::Sampled StepRunner::finish_sample(PendingSample p, double timeout_s) {
  // The serve loop waits for ready() itself, with its liveness checks; this wait is the
  // one-process executor's.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (!p.ready()) {
    TORCH_CHECK(std::chrono::steady_clock::now() < deadline, "step ", p.header.step_id, ": its tokens did not come ",
                "back from the device within ", timeout_s, " s");
    std::this_thread::yield();
  }
  const comm::StepHeader& h = p.header;
  const std::vector<int64_t> last_rows = batch_of(h).last_logit_rows();  // [seqs]
  const at::Tensor& logits = p.logits;
  const bool on_device = p.on_device();
  const at::Tensor& picked = p.picked;
  const at::Tensor cpu = on_device ? at::Tensor() : logits.to(at::kCPU, at::kFloat).contiguous();
  const int64_t vocab = logits.size(1);
  auto row_ptr = [&](int64_t r) { return cpu.data_ptr<float>() + r * vocab; };
  int64_t k = 0;
  for (const auto& s : h.seqs) k = std::max<int64_t>(k, s.sampling.logprobs);
  Records rec(k);
  at::Tensor out = at::full({static_cast<int64_t>(h.result_rows())}, -1, at::kLong);
  int64_t* out_ids = out.data_ptr<int64_t>();
  int64_t tok = 0, fork_row = static_cast<int64_t>(h.seqs.size());
  for (size_t i = 0; i < h.seqs.size(); ++i) {
    const comm::SeqEntry& s = h.seqs[i];
    const SamplingParams& p = s.sampling;
    const int64_t n_rows = s.all_logits() ? s.n_tokens : 1, row = last_rows[i] - n_rows + 1;
    const int64_t* ids = h.ids.empty() ? nullptr : h.ids.data() + tok;
    if (s.start_pos == 0 && !s.recompute) {  // a new sequence in this slot
      samplers_.erase(s.slot);
      prompt_tail_.erase(s.slot);
    }
    auto it = samplers_.try_emplace(s.slot, p).first;
    Sampler& sm = it->second;
    if (!sm.sampled()) {
      TORCH_CHECK(ids || !p.needs_prompt(), "step ", h.step_id, ": slot ", s.slot,
                  " needs its prompt's token ids (repetition_penalty or prompt logprobs), which the step lacks");
      // An encoder-decoder model's penalties see the decoder's tokens, as transformers'
      // do, not the encoder's input.
      const int64_t enc = std::clamp<int64_t>(s.context - s.start_pos, 0, s.n_tokens);
      if (ids) sm.observe(ids + enc, s.n_tokens - enc);
      if (p.prompt_logprobs && p.logprobs >= 0) {  // score each prompt token by the logits before it
        for (int64_t j = 0; j < s.n_tokens; ++j) {
          const int64_t pos = s.start_pos + j;
          TokenScore ts;
          if (pos == 0) {
            ts.token = ids[j];
            ts.logprob = std::numeric_limits<double>::quiet_NaN();
          } else if (j > 0) {
            ts = score_token(row_ptr(row + j - 1), vocab, ids[j], p.logprobs);
          } else {
            auto t = prompt_tail_.find(s.slot);
            TORCH_CHECK(t != prompt_tail_.end(), "step ", h.step_id, ": slot ", s.slot,
                        " continues a prompt whose previous chunk was not seen here");
            ts = score_token(t->second.data(), vocab, ids[j], p.logprobs);
          }
          rec.add(static_cast<int64_t>(i), pos, ts);
        }
        const float* last = row_ptr(last_rows[i]);
        if (s.sample) {
          prompt_tail_.erase(s.slot);
        } else {
          prompt_tail_[s.slot].assign(last, last + vocab);
        }
      }
    }
    if (s.sample && on_device) {
      out_ids[i] = picked.data_ptr<int64_t>()[i];
      sm.accept(out_ids[i]);
    } else if (s.sample) {
      const at::Tensor last = cpu[last_rows[i]];
      const int64_t pos = s.start_pos + s.n_tokens;
      // Forks start from the prompt, before this sequence's own token.
      const std::optional<Sampler> base = s.forks.empty() ? std::nullopt : std::optional<Sampler>(sm);
      TokenScore ts;
      out_ids[i] = sm.next(last, p.logprobs >= 0 ? &ts : nullptr);
      if (p.logprobs >= 0) rec.add(static_cast<int64_t>(i), pos, ts);
      for (const auto& [slot, seed] : s.forks) {
        prompt_tail_.erase(slot);
        Sampler& f = samplers_.insert_or_assign(slot, base->fork(seed)).first->second;
        out_ids[fork_row] = f.next(last, p.logprobs >= 0 ? &ts : nullptr);
        if (p.logprobs >= 0) rec.add(fork_row, pos, ts);
        ++fork_row;
      }
    } else {
      fork_row += static_cast<int64_t>(s.forks.size());
    }
    tok += s.n_tokens;
  }
  if (!on_device && takes_ids()) {  // every sampled row's token, forks' included
    std::vector<int64_t> slots, ids;
    int64_t row = static_cast<int64_t>(h.seqs.size());
    for (size_t i = 0; i < h.seqs.size(); ++i) {
      const comm::SeqEntry& s = h.seqs[i];
      if (s.sample) {
        slots.push_back(s.slot);
        ids.push_back(out_ids[i]);
        for (const auto& f : s.forks) {
          slots.push_back(f.first);
          ids.push_back(out_ids[row++]);
        }
      } else {
        row += static_cast<int64_t>(s.forks.size());
      }
    }
    keep_sampled(slots, at::tensor(ids, at::kLong), logits.device());
  }
  return {out, rec.tensor()};
}

}  // namespace cascade::stage
