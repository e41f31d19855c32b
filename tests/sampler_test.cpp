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

TEST(Sampler, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_THROW(Sampler{p}, c10::Error);
  p.top_p = 1;
  p.top_k = -1;
  EXPECT_THROW(Sampler{p}, c10::Error);
}

}  // namespace
}  // namespace cascade::stage
