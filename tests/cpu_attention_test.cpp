#include "stage/kernels/cpu_attention.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace cascade::stage {
namespace {

// float64 reference: softmax over positions [lo, len) of scale * q.k (soft-capped, plus
// ALiBi), times v; GQA by head / group.
at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t len,
                     const CpuAttention& a) {
  const int64_t heads = q.size(0), kv_heads = k.size(0), group = heads / kv_heads;
  const int64_t lo = a.window > 0 ? std::max<int64_t>(0, len - a.window) : 0;
  at::Tensor out = at::empty({heads, q.size(1)}, at::kDouble);
  for (int64_t h = 0; h < heads; ++h) {
    const at::Tensor keys = k[h / group].narrow(0, lo, len - lo).to(at::kDouble);
    const at::Tensor vals = v[h / group].narrow(0, lo, len - lo).to(at::kDouble);
    at::Tensor s = at::mv(keys, q[h].to(at::kDouble)) * a.scale;
    if (a.softcap > 0) s = at::tanh(s / a.softcap) * a.softcap;
    if (a.alibi.defined()) s = s + a.alibi[h].item<double>() * at::arange(lo, len, at::kDouble);
    out[h] = at::mv(vals.t(), at::softmax(s, 0));
  }
  return out;
}

struct Case {
  at::ScalarType dtype;
  int64_t heads, kv_heads, head_dim, len, window;
  double softcap;
  bool alibi;
};

TEST(CpuAttention, MatchesFloat64ForEveryOption) {
  const Case cases[] = {
      {at::kFloat, 8, 8, 64, 1, 0, 0, false},         {at::kFloat, 8, 2, 64, 37, 0, 0, false},
      {at::kFloat, 4, 4, 80, 300, 16, 0, false},      {at::kFloat, 6, 3, 128, 90, 0, 30.0, false},
      {at::kFloat, 5, 5, 32, 70, 0, 0, true},         {at::kBFloat16, 32, 8, 128, 513, 0, 0, false},
      {at::kBFloat16, 8, 8, 256, 64, 20, 50.0, true}, {at::kHalf, 4, 1, 64, 40, 0, 0, false},
  };
  at::manual_seed(7);
  for (const Case& c : cases) {
    const int64_t max_len = c.len + 9;  // positions past len hold garbage that must not count
    const at::Tensor q = at::randn({c.heads, c.head_dim}).to(c.dtype);
    const at::Tensor k = at::randn({c.kv_heads, max_len, c.head_dim}).mul_(2).to(c.dtype);
    const at::Tensor v = at::randn({c.kv_heads, max_len, c.head_dim}).to(c.dtype);
    k.narrow(1, c.len, max_len - c.len).fill_(1e4);
    CpuAttention a;
    a.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    a.window = c.window;
    a.softcap = c.softcap;
    if (c.alibi) a.alibi = at::rand({c.heads}).neg_();
    at::Tensor out = at::empty({c.heads, c.head_dim}, c.dtype);
    ASSERT_TRUE(cpu_decode_attention(q, k, v, c.len, a, out));
    const at::Tensor want = reference(q, k, v, c.len, a);
    const double err = (out.to(at::kDouble) - want).abs().max().item<double>();
    const double tol = c.dtype == at::kFloat ? 1e-5 : 1e-2;
    EXPECT_LT(err, tol) << c.heads << "/" << c.kv_heads << " heads, d " << c.head_dim << ", len " << c.len
                        << ", window " << c.window << ", dtype " << c.dtype;
  }
}

TEST(CpuAttention, ThreadsDoNotChangeTheBits) {
  at::manual_seed(1);
  const at::Tensor q = at::randn({32, 128}).to(at::kBFloat16);
  const at::Tensor k = at::randn({8, 2048, 128}).to(at::kBFloat16), v = at::randn({8, 2048, 128}).to(at::kBFloat16);
  auto run = [&](int threads) {
    at::set_num_threads(threads);
    at::Tensor out = at::empty({32, 128}, at::kBFloat16);
    EXPECT_TRUE(cpu_decode_attention(q, k, v, 2000, {0.1, 0, 0, {}}, out));
    return out;
  };
  const at::Tensor one = run(1);
  EXPECT_TRUE(at::equal(one, run(2)));
  at::set_num_threads(1);
}

// A prompt chunk of n tokens from position `start`: each query against the float64
// reference of a decode at its position (keys [0, start + t], or its window).
TEST(CpuAttention, PromptMatchesFloat64PerQueryForEveryOption) {
  struct PromptCase {
    Case c;  // c.len: the chunk's tokens
    int64_t start;
  };
  const PromptCase cases[] = {
      {{at::kFloat, 8, 2, 64, 37, 0, 0, false}, 0},
      {{at::kFloat, 4, 4, 80, 50, 16, 0, false}, 9},
      {{at::kFloat, 6, 3, 128, 20, 0, 30.0, false}, 5},
      {{at::kFloat, 5, 5, 32, 33, 0, 0, true}, 0},
      {{at::kBFloat16, 16, 4, 128, 70, 0, 0, false}, 0},
      {{at::kBFloat16, 8, 8, 64, 40, 20, 50.0, true}, 30},
      {{at::kHalf, 4, 1, 64, 17, 0, 0, false}, 100},
      // Several blocks of queries (cpu_attention.cpp, kQueryBlock), a window across them.
      {{at::kFloat, 4, 2, 64, 150, 40, 0, false}, 7},
      {{at::kBFloat16, 4, 4, 32, 130, 0, 0, true}, 3},
  };
  at::manual_seed(11);
  for (const PromptCase& pc : cases) {
    const Case& c = pc.c;
    const int64_t n = c.len, len = pc.start + n, max_len = len + 5;
    // q as the model hands it over: one head's row strided within the fused projection.
    const at::Tensor q = at::randn({n, c.heads, c.head_dim + 3}).to(c.dtype).narrow(2, 0, c.head_dim);
    const at::Tensor k = at::randn({c.kv_heads, max_len, c.head_dim}).mul_(2).to(c.dtype);
    const at::Tensor v = at::randn({c.kv_heads, max_len, c.head_dim}).to(c.dtype);
    k.narrow(1, len, max_len - len).fill_(1e4);  // past the prompt: must not count
    CpuAttention a;
    a.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    a.window = c.window;
    a.softcap = c.softcap;
    if (c.alibi) a.alibi = at::rand({c.heads}).neg_();
    at::Tensor out = at::empty({n, c.heads, c.head_dim}, c.dtype);
    ASSERT_TRUE(cpu_prompt_attention(q, k, v, pc.start, a, out));
    double err = 0;
    for (int64_t t = 0; t < n; ++t) {
      const at::Tensor want = reference(q[t], k, v, pc.start + t + 1, a);
      err = std::max(err, (out[t].to(at::kDouble) - want).abs().max().item<double>());
    }
    const double tol = c.dtype == at::kFloat ? 1e-5 : 1e-2;
    EXPECT_LT(err, tol) << c.heads << "/" << c.kv_heads << " heads, d " << c.head_dim << ", " << n << " tokens from "
                        << pc.start << ", window " << c.window << ", dtype " << c.dtype;
  }
}

// A query's result is the same bits whatever else is in its chunk, and whatever the
// threads: a prompt of 150 (three blocks of queries) and the same in chunks of 21, 79
// and 50 tokens.
TEST(CpuAttention, PromptQueriesDoNotDependOnTheirChunk) {
  at::manual_seed(3);
  const int64_t heads = 8, d = 64, n = 150;
  const at::Tensor q = at::randn({n, heads, d}).to(at::kBFloat16);
  const at::Tensor k = at::randn({2, 160, d}).to(at::kBFloat16), v = at::randn({2, 160, d}).to(at::kBFloat16);
  auto run = [&](int64_t start, int64_t count, int threads) {
    at::set_num_threads(threads);
    at::Tensor out = at::empty({count, heads, d}, at::kBFloat16);
    EXPECT_TRUE(cpu_prompt_attention(q.narrow(0, start, count), k, v, start, {0.125, 0, 0, {}}, out));
    return out;
  };
  const at::Tensor whole = run(0, n, 1);
  EXPECT_TRUE(at::equal(whole, at::cat({run(0, 21, 1), run(21, 79, 1), run(100, n - 100, 1)})));
  EXPECT_TRUE(at::equal(whole, run(0, n, 2)));
  at::set_num_threads(1);
}

TEST(CpuAttention, ShapesItDoesNotTakeAreLeftToTheCaller) {
  const at::Tensor q = at::randn({4, 16}), k = at::randn({2, 8, 16});
  at::Tensor out = at::full({4, 16}, 3.0f);
  EXPECT_FALSE(cpu_decode_attention(q, k, k, 9, {}, out));                   // past max_seq_len
  EXPECT_FALSE(cpu_decode_attention(q.to(at::kDouble), k, k, 4, {}, out));   // mixed dtypes
  EXPECT_FALSE(cpu_decode_attention(at::randn({3, 16}), k, k, 4, {}, out));  // 3 heads over 2 KV heads
  EXPECT_FALSE(cpu_decode_attention(q, k.transpose(1, 2), k, 4, {}, out));   // not [kv, len, d]
  EXPECT_TRUE(at::equal(out, at::full({4, 16}, 3.0f)));                      // untouched
  at::Tensor pout = at::full({3, 4, 16}, 3.0f);
  const at::Tensor pq = at::randn({3, 4, 16});
  EXPECT_FALSE(cpu_prompt_attention(pq, k, k, 6, {}, pout));                  // reaches position 9 of 8
  EXPECT_FALSE(cpu_prompt_attention(pq, k, k, -1, {}, pout));                 // before the first
  EXPECT_FALSE(cpu_prompt_attention(pq.transpose(0, 1), k, k, 0, {}, pout));  // [heads, n, d]
  EXPECT_FALSE(cpu_prompt_attention(pq.transpose(1, 2), k, k, 0, {}, pout));  // head_dim strided
  EXPECT_FALSE(cpu_prompt_attention(pq.to(at::kHalf), k, k, 0, {}, pout));    // mixed dtypes
  EXPECT_TRUE(at::equal(pout, at::full({3, 4, 16}, 3.0f)));                   // untouched
}

}  // namespace
}  // namespace cascade::stage
