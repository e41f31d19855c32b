#include "stage/kv_cache.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/test_util.h"

namespace cascade::stage {
namespace {

// Plain causal attention for one sequence with GQA, written out directly.
at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start, int64_t window,
                     double scale) {
  const int64_t n = q.size(0), heads = q.size(1), kvh = k.size(1);
  at::Tensor out = at::zeros_like(q);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kvh);
      std::vector<at::Tensor> scores;
      const int64_t qpos = start + i;
      at::Tensor s = at::full({qpos + 1}, -INFINITY);
      for (int64_t j = 0; j <= qpos; ++j) {
        if (window > 0 && qpos - j >= window) continue;
        s[j] = (q[i][h] * k[j][g]).sum() * scale;
      }
      at::Tensor p = at::softmax(s, 0);
      out[i][h] = (p.unsqueeze(1) * v.narrow(0, 0, qpos + 1).select(1, g)).sum(0);
    }
  }
  return out.view({n, heads * q.size(2)});
}

TEST(KvCache, PrefillThenDecodeMatchesDirectAttention) {
  at::manual_seed(0);
  const int64_t heads = 4, kvh = 2, d = 8, total = 9;
  KvCache kv({0}, /*slots=*/3, kvh, /*max_seq_len=*/16, d, at::kFloat, at::kCPU);
  at::Tensor q = at::randn({total, heads, d}), k = at::randn({total, kvh, d}), v = at::randn({total, kvh, d});
  const double scale = 1.0 / std::sqrt(double(d));
  for (int64_t window : {0, 3}) {
    // Slot 2: prefill 6 tokens, then 3 decode steps of one token.
    at::Tensor got =
        kv.attend(0, q.narrow(0, 0, 6), k.narrow(0, 0, 6), v.narrow(0, 0, 6), Batch{{{2, 0, 6}}}, scale, window);
    std::vector<at::Tensor> rows = {got};
    for (int64_t t = 6; t < total; ++t) {
      rows.push_back(
          kv.attend(0, q.narrow(0, t, 1), k.narrow(0, t, 1), v.narrow(0, t, 1), Batch{{{2, t, 1}}}, scale, window));
    }
    EXPECT_TRUE(at::allclose(at::cat(rows, 0), reference(q, k, v, 0, window, scale), 1e-5, 1e-5))
        << "window " << window;
  }
}

TEST(KvCache, RaggedBatchKeepsSequencesApart) {
  at::manual_seed(1);
  const int64_t heads = 2, d = 4;
  KvCache together({5}, 2, heads, 8, d, at::kFloat, at::kCPU), alone({5}, 2, heads, 8, d, at::kFloat, at::kCPU);
  at::Tensor q = at::randn({7, heads, d}), k = at::randn({7, heads, d}), v = at::randn({7, heads, d});
  Batch both{{{0, 0, 3}, {1, 0, 4}}};
  at::Tensor got = together.attend(5, q, k, v, both, 0.5, 0);
  at::Tensor a = alone.attend(5, q.narrow(0, 0, 3), k.narrow(0, 0, 3), v.narrow(0, 0, 3), Batch{{{0, 0, 3}}}, 0.5, 0);
  at::Tensor b = alone.attend(5, q.narrow(0, 3, 4), k.narrow(0, 3, 4), v.narrow(0, 3, 4), Batch{{{1, 0, 4}}}, 0.5, 0);
  EXPECT_TRUE(at::allclose(got, at::cat({a, b}, 0), 1e-6, 1e-6));
}

TEST(KvCache, BoundsAreChecked) {
  KvCache kv({0}, 2, 1, 4, 2, at::kFloat, at::kCPU);
  EXPECT_EQ(kv.bytes(), 2u * 2 * 1 * 4 * 2 * sizeof(float));
  at::Tensor x = at::zeros({1, 1, 2});
  EXPECT_THROW_WITH(kv.attend(0, x, x, x, Batch{{{2, 0, 1}}}, 1.0, 0), c10::Error, "KV slot 2 out of range");
  EXPECT_THROW_WITH(kv.attend(0, x, x, x, Batch{{{0, 4, 1}}}, 1.0, 0), c10::Error, "past max_seq_len 4");
  EXPECT_THROW_WITH(kv.attend(3, x, x, x, Batch{{{0, 0, 1}}}, 1.0, 0), c10::Error, "layer 3 has no KV cache");
}

}  // namespace
}  // namespace cascade::stage
