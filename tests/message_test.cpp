#include "comm/message.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace cascade::comm {
namespace {

StepHeader sample() {
  StepHeader h;
  h.step_id = 123456789012ull;
  h.microbatch = 3;
  h.kind = StepKind::kDecode;
  SeqEntry a;
  a.slot = 0;
  a.start_pos = 17;
  a.n_tokens = 1;
  a.fed = true;
  SeqEntry b;
  b.slot = 5;
  b.start_pos = 0;
  b.n_tokens = 2;
  b.sample = false;
  b.sampling.temperature = 0.7;
  b.sampling.top_k = 40;
  b.sampling.top_p = 0.95;
  b.sampling.min_p = 0.05;
  b.sampling.presence_penalty = 0.5;
  b.sampling.frequency_penalty = -0.25;
  b.sampling.repetition_penalty = 1.3;
  b.sampling.logit_bias = {{7, -100.0f}, {123456, 2.5f}};
  b.sampling.logprobs = 5;
  b.sampling.prompt_logprobs = true;
  b.sampling.seed = 99;
  b.forks = {{6, 100}, {7, 101}};
  b.seq_len = 9;
  b.context = 7;  // an encoder-decoder prompt of 7 tokens and the decoder's start token
  SeqEntry c;     // a recompute chunk
  c.slot = 2;
  c.n_tokens = 1;
  c.recompute = true;
  c.sample = false;
  c.seq_len = 4;
  h.seqs = {a, b, c};
  h.ids = {11, 12, 13, 14};
  h.flags = kStepWantLogits | kStepWantLogprobs;
  h.shape = {2, 2560};
  h.dtype = 15;
  return h;
}

TEST(Message, RoundTrip) {
  const StepHeader h = sample();
  const auto b = encode(h);
  EXPECT_EQ(decode_step(b.data(), b.size()), h);
  EXPECT_EQ(h.result_rows(), 5u);  // three sequences, then two forks
  // Every field takes part: a change anywhere is seen.
  StepHeader other = h;
  other.seqs[1].sampling.logit_bias[1].second = 2.0f;
  EXPECT_FALSE(decode_step(encode(other).data(), encode(other).size()) == h);
  other = h;
  other.seqs[1].forks[0].second = 1;
  EXPECT_FALSE(decode_step(encode(other).data(), encode(other).size()) == h);
  other = h;
  other.seqs[2].recompute = false;
  EXPECT_FALSE(decode_step(encode(other).data(), encode(other).size()) == h);
  other = h;
  other.seqs[0].fed = false;
  EXPECT_FALSE(decode_step(encode(other).data(), encode(other).size()) == h);
  other = h;
  other.seqs[1].seq_len = 10;
  EXPECT_FALSE(decode_step(encode(other).data(), encode(other).size()) == h);
  other = h;
  other.seqs[1].context = 6;
  EXPECT_FALSE(decode_step(encode(other).data(), encode(other).size()) == h);
  StepHeader empty;
  const auto e = encode(empty);
  EXPECT_EQ(decode_step(e.data(), e.size()), empty);
}

TEST(Message, PrefillTokensAddTheDecoderStart) {
  EXPECT_EQ(prefill_tokens({5, 6}, -1), (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(prefill_tokens({5, 6}, 0), (std::vector<int64_t>{5, 6, 0}));
}

TEST(Message, EveryTruncationIsAnError) {
  const auto b = encode(sample());
  for (size_t n = 0; n < b.size(); ++n) {
    EXPECT_THROW(decode_step(b.data(), n), CommError) << n << " bytes";
  }
  EXPECT_THROW_WITH(decode_step(b.data(), 10), CommError, "truncated");
}

TEST(Message, WrongMagicVersionAndGarbage) {
  auto b = encode(sample());
  auto v = b;
  v[4] = 9;  // version field
  EXPECT_THROW_WITH(decode_step(v.data(), v.size()), CommError, "wire version 9", "speaks 6");
  auto m = b;
  m[0] ^= 0xFF;
  EXPECT_THROW_WITH(decode_step(m.data(), m.size()), CommError, "bad magic");
  auto t = b;
  t.push_back(0);
  EXPECT_THROW_WITH(decode_step(t.data(), t.size()), CommError, "1 trailing bytes");
  auto k = b;
  k[18] = 7;  // kind
  EXPECT_THROW_WITH(decode_step(k.data(), k.size()), CommError, "unknown kind 7");
  // Only a decode entry can be fed its sampled token.
  StepHeader fed = sample();
  fed.seqs[1].fed = true;  // two prompt tokens from position 0
  const auto f = encode(fed);
  EXPECT_THROW_WITH(decode_step(f.data(), f.size()), CommError, "feeds slot 5", "not a decode entry");
  // A huge count is refused before anything is allocated for it.
  StepHeader one;
  one.seqs.resize(1);
  auto c = encode(one);
  const size_t bias_count = 4 + 2 + 8 + 4 + 1 + 1 + 1 + 4 + 3 * 8 + 7 * 8;  // header, entry, 7 options
  c[bias_count] = 0xFF;
  c[bias_count + 1] = 0xFF;
  c[bias_count + 2] = 0xFF;
  EXPECT_THROW_WITH(decode_step(c.data(), c.size()), CommError, "logit_bias entries");
}

}  // namespace
}  // namespace cascade::comm
