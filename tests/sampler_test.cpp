#include "stage/sampler.h"

#include <gtest/gtest.h>

#include <map>

namespace cascade::stage {
namespace {

at::Tensor logits() { return at::tensor({0.1f, 2.0f, 1.9f, -1.0f, 0.5f, 1.8f}); }

std::vector<int64_t> draw(const SamplingParams& p, int n) {
  Sampler s(p);
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.next(logits()));
  return out;
}

TEST(Sampler, GreedyIsArgmax) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.next(logits()), 1);
  EXPECT_EQ(s.next(logits().to(at::kBFloat16)), 1);
}

TEST(Sampler, SameSeedSameTokensOtherSeedOtherTokens) {
  SamplingParams p;
  p.temperature = 1.5;
  p.seed = 42;
  const auto a = draw(p, 64), b = draw(p, 64);
  EXPECT_EQ(a, b);
  p.seed = 43;
  EXPECT_NE(draw(p, 64), a);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  SamplingParams p;
  p.temperature = 1.0;
  p.top_k = 1;
  for (int64_t t : draw(p, 32)) EXPECT_EQ(t, 1);
  p.top_k = 0;
  p.top_p = 1e-6;
  for (int64_t t : draw(p, 32)) EXPECT_EQ(t, 1);
}

TEST(Sampler, TopKRestrictsTheSupport) {
  SamplingParams p;
  p.temperature = 5.0;  // nearly flat: without top-k every token would appear
  p.top_k = 3;
  p.seed = 7;
  std::map<int64_t, int> seen;
  for (int64_t t : draw(p, 2000)) seen[t]++;
  EXPECT_EQ(seen.size(), 3u);
  EXPECT_TRUE(seen.count(1) && seen.count(2) && seen.count(5));
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  SamplingParams p;
  p.temperature = 1.0;
  p.seed = 3;
  const int n = 20000;
  std::map<int64_t, int> seen;
  for (int64_t t : draw(p, n)) seen[t]++;
  at::Tensor probs = at::softmax(logits(), 0);
  for (int64_t i = 0; i < 6; ++i) EXPECT_NEAR(seen[i] / double(n), probs[i].item<double>(), 0.015) << "token " << i;
}

std::vector<int64_t> greedy_run(Sampler& s, int n) {
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.next(logits()));
  return out;
}

TEST(Sampler, LogitBiasIsAddedToTheLogits) {
  SamplingParams p;
  p.logit_bias = {{3, 5.0f}};
  EXPECT_EQ(Sampler(p).next(logits()), 3);  // -1 + 5 beats 2.0
  p.logit_bias = {{1, -100.0f}};
  EXPECT_EQ(Sampler(p).next(logits()), 2);
  p.logit_bias = {{6, 1.0f}};  // outside the vocabulary
  EXPECT_THROW(Sampler(p).next(logits()), c10::Error);
}

// HF's RepetitionPenaltyLogitsProcessor: over the prompt and generated tokens, a
// positive logit divided by the penalty, a negative one multiplied.
TEST(Sampler, RepetitionPenaltyCoversThePromptAsHfDoes) {
  SamplingParams p;
  p.repetition_penalty = 1.5;
  p.logprobs = 0;
  Sampler s(p);
  const int64_t prompt[] = {1, 3};
  s.observe(prompt, 2);
  TokenScore sc;
  EXPECT_EQ(s.next(logits(), &sc), 2);  // 2.0 / 1.5 < 1.9
  std::vector<float> want = {0.1f, 2.0f / 1.5f, 1.9f, -1.5f, 0.5f, 1.8f};
  EXPECT_NEAR(sc.logprob, at::log_softmax(at::tensor(want), 0)[2].item<double>(), 1e-6);
  // Now 2 was generated: penalised too (1.9 / 1.5), so 5 leads.
  EXPECT_EQ(s.next(logits()), 5);
  // All of 1, 2, 5 penalised once (a set, not counts): 1.333 > 1.267 > 1.2.
  EXPECT_EQ(s.next(logits()), 1);
  EXPECT_EQ(s.next(logits()), 1);
}

TEST(Sampler, PresenceAndFrequencyPenaltiesCountGeneratedTokensOnly) {
  SamplingParams p;
  p.frequency_penalty = 0.15;
  p.repetition_penalty = 1.0;
  Sampler f(p);
  const int64_t prompt[] = {1, 1, 1};
  f.observe(prompt, 3);  // the prompt does not count for OpenAI's penalties
  EXPECT_EQ(greedy_run(f, 4), (std::vector<int64_t>{1, 2, 1, 5}));
  p.frequency_penalty = 0;
  p.presence_penalty = 0.15;
  Sampler q(p);
  EXPECT_EQ(greedy_run(q, 4), (std::vector<int64_t>{1, 2, 1, 1}));  // presence does not grow: 1.85 > 1.8
}

TEST(Sampler, MinPKeepsTokensNearTheBest) {
  SamplingParams p;
  p.temperature = 1.0;
  p.min_p = 0.5;  // relative to e^2.0: tokens 2 (0.90) and 5 (0.82) stay, 4 (0.22) goes
  p.seed = 3;
  std::map<int64_t, int> seen;
  for (int64_t t : draw(p, 3000)) seen[t]++;
  EXPECT_EQ(seen.size(), 3u);
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[2], 0);
  EXPECT_GT(seen[5], 0);
}

TEST(Sampler, LogprobsAreTheLogSoftmaxBeforeTemperature) {
  SamplingParams p;
  p.temperature = 1.7;
  p.logprobs = 3;
  p.seed = 11;
  Sampler s(p);
  const at::Tensor ref = at::log_softmax(logits().to(at::kDouble), 0);
  for (int i = 0; i < 20; ++i) {
    TokenScore sc;
    const int64_t t = s.next(logits(), &sc);
    EXPECT_EQ(sc.token, t);
    EXPECT_NEAR(sc.logprob, ref[t].item<double>(), 1e-6);
    ASSERT_EQ(sc.top.size(), 3u);
    const int64_t best[] = {1, 2, 5};
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(sc.top[k].first, best[k]);
      EXPECT_NEAR(sc.top[k].second, ref[best[k]].item<double>(), 1e-6);
    }
  }
  const TokenScore all = score_token(logits().data_ptr<float>(), 6, 3, 100);  // more than the vocabulary
  EXPECT_EQ(all.top.size(), 6u);
  EXPECT_EQ(all.top.back().first, 3);
}

TEST(Sampler, AForkDrawsAsAFreshSamplerWithItsSeed) {
  SamplingParams p;
  p.temperature = 1.2;
  p.repetition_penalty = 1.3;
  p.seed = 5;
  const int64_t prompt[] = {2, 4};
  Sampler a(p);
  a.observe(prompt, 2);
  Sampler b = a.fork(9);
  p.seed = 9;
  Sampler c(p);
  c.observe(prompt, 2);
  EXPECT_EQ(greedy_run(b, 32), greedy_run(c, 32));
  EXPECT_NE(greedy_run(a, 32), greedy_run(c, 32));
}

TEST(Sampler, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_THROW(Sampler{p}, c10::Error);
  p.top_p = 1;
  p.top_k = -1;
  EXPECT_THROW(Sampler{p}, c10::Error);
  p.top_k = 0;
  p.min_p = 1.5;
  EXPECT_THROW(Sampler{p}, c10::Error);
  p.min_p = 0;
  p.repetition_penalty = 0;
  EXPECT_THROW(Sampler{p}, c10::Error);
}

}  // namespace
}  // namespace cascade::stage
