// Turns a sequence's logits into its next token, with the options of
// comm::SamplingParams, in this order: logit_bias is added; the repetition penalty
// (prompt and generated tokens), then the presence and frequency penalties (generated
// tokens) change the logits; log-probabilities are read here (so they describe the
// distribution the token was drawn from, before temperature and truncation); then
// greedy takes the first largest logit, or sampling divides by the temperature and
// keeps top-k, then top-p, then min-p (HF's order) before drawing.
//
// Each sequence owns a Sampler seeded from its request, so its tokens depend only on
// its own seed, prompt and logits, never on what else shares the batch. The generator
// is std::mt19937_64, so the same seed gives the same tokens on every LibTorch version.
// Thread-safety: none; one Sampler per sequence.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <random>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "comm/sampling.h"

namespace cascade::stage {

using comm::SamplingParams;

// A scored token: its log-probability and the most likely tokens' at that position.
struct TokenScore {
  int64_t token = -1;
  double logprob = 0;                           // NaN: not scored (a prompt's first token)
  std::vector<std::pair<int64_t, double>> top;  // best first; ties by token id
};

// log_softmax(logits)[token] and the `top` best entries. logits: `n` floats.
TokenScore score_token(const float* logits, int64_t n, int64_t token, int64_t top);

class Sampler {
 public:
  // Throws c10::Error naming an option out of range.
  explicit Sampler(const SamplingParams& p);

  // Tokens fed to the sequence before its first sampled token: its prompt, which the
  // repetition penalty covers. Ignored once the sequence has sampled (later inputs are
  // its own tokens, counted when sampled).
  void observe(const int64_t* ids, int64_t n);
  // The next token. logits [vocab], any float dtype and device. `score`, when given,
  // receives the token's log-probability and top alternatives (params.logprobs >= 0).
  int64_t next(const at::Tensor& logits, TokenScore* score = nullptr);
  // Records `token` as this sequence's next one when it was chosen elsewhere (the
  // argmax of a whole batch's logits on their device, for plain greedy sequences).
  void accept(int64_t token);
  // Whether the argmax of the raw logits is the token, whatever the history: greedy,
  // no logit_bias, no penalties (logprobs do not change the token).
  static bool plain_greedy(const SamplingParams& p);
  // A sequence with this one's options and history but its own seed (n > 1).
  Sampler fork(uint64_t seed) const;

  const SamplingParams& params() const { return p_; }
  bool sampled() const { return !counts_.empty(); }

 private:
  void adjust(std::vector<float>& l) const;
  int64_t draw(const std::vector<float>& l);

  SamplingParams p_;
  std::mt19937_64 rng_;
  std::unordered_set<int64_t> seen_;             // prompt and generated tokens
  std::unordered_map<int64_t, int64_t> counts_;  // generated tokens
};

}  // namespace cascade::stage
