#include "stage/layers/rope.h"

#include <gtest/gtest.h>

#include <cmath>

namespace cascade::stage {
namespace {

TEST(Rope, DefaultFrequencies) {
  Rope r(RopeConfig{}, 8, 128);
  at::Tensor f = r.inv_freq(1);
  ASSERT_EQ(f.numel(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i].item<double>(), std::pow(10000.0, -2.0 * i / 8), 1e-7);
}

TEST(Rope, LinearDividesFrequencies) {
  RopeConfig c;
  c.type = "linear";
  c.factor = 4;
  EXPECT_TRUE(at::allclose(Rope(c, 8, 128).inv_freq(1) * 4, Rope(RopeConfig{}, 8, 128).inv_freq(1)));
}

TEST(Rope, DynamicChangesOnlyPastTheTrainedLength) {
  RopeConfig c;
  c.type = "dynamic";
  c.factor = 2;
  Rope r(c, 8, 16);
  const at::Tensor base = Rope(RopeConfig{}, 8, 16).inv_freq(1);
  EXPECT_TRUE(at::equal(r.inv_freq(16), base));
  EXPECT_FALSE(at::equal(r.inv_freq(17), base));
  EXPECT_LT(r.inv_freq(40)[3].item<double>(), base[3].item<double>());  // longer -> slower rotation
}

TEST(Rope, Llama3KeepsHighFrequenciesAndSlowsLowOnes) {
  RopeConfig c;
  c.type = "llama3";
  c.theta = 500000;
  c.factor = 8;
  c.low_freq_factor = 1;
  c.high_freq_factor = 4;
  c.original_max_position = 64;
  RopeConfig plain;
  plain.theta = 500000;
  const at::Tensor base = Rope(plain, 16, 256).inv_freq(1), f = Rope(c, 16, 256).inv_freq(1);
  EXPECT_FLOAT_EQ(f[0].item<float>(), base[0].item<float>());      // wavelength 2π: untouched
  EXPECT_FLOAT_EQ(f[7].item<float>(), base[7].item<float>() / 8);  // longest wavelength: slowed by factor
}

RopeConfig longrope() {
  RopeConfig c;
  c.type = "longrope";
  c.original_max_position = 8;
  c.short_factor = {1.0, 2.0};
  c.long_factor = {3.0, 5.0};
  c.attention_factor = 1.5;
  return c;
}

// LongRoPE: the short factors while the sequence fits the original context, the long
// ones once it is longer (the whole sequence's length decides), cos and sin scaled.
TEST(Rope, LongropePicksFactorsByTheSequenceLength) {
  const Rope r(longrope(), 4, 32);
  const at::Tensor base = Rope(RopeConfig{}, 4, 32).inv_freq(1);
  EXPECT_TRUE(r.inv_freq(8).allclose(base / at::tensor({1.0f, 2.0f})));
  EXPECT_TRUE(r.inv_freq(9).allclose(base / at::tensor({3.0f, 5.0f})));
  // One batch: a 6-token prefill (short), a prefill that ends at 10 (long from its
  // first token), a token at position 8 (the 9th: long).
  const Batch b{{{0, 0, 6}, {1, 4, 6}, {2, 8, 1}}};
  const at::Tensor pos = b.positions(at::kCPU);
  auto [cos, sin] = r.cos_sin(b, pos);
  const auto want = [&](int64_t row, int64_t seq_len) {
    const at::Tensor f = pos[row].to(at::kFloat) * r.inv_freq(seq_len);
    return at::cat({f, f}).cos() * 1.5;
  };
  EXPECT_TRUE(cos[0].allclose(want(0, 6)));
  EXPECT_TRUE(cos[6].allclose(want(6, 10)));  // position 4 of a 10-token sequence
  EXPECT_FALSE(cos[6].allclose(want(6, 8)));
  EXPECT_TRUE(cos[12].allclose(want(12, 9)));
  EXPECT_NEAR(sin[3].pow(2).add(cos[3].pow(2)).mean().item<double>(), 1.5 * 1.5, 1e-5);
}

// A prompt prefilled in chunks counts as long as the whole prompt (SeqSlice::seq_len),
// as transformers sees it in one piece: its first chunk already takes the long factors.
TEST(Rope, LongropeChunksGoByTheWholePrompt) {
  const Rope r(longrope(), 4, 32);
  const Batch whole{{{0, 0, 10}}};
  Batch chunk{{{0, 0, 4}}};
  chunk.seqs[0].seq_len = 10;
  auto [wc, ws] = r.cos_sin(whole, whole.positions(at::kCPU));
  auto [cc, cs] = r.cos_sin(chunk, chunk.positions(at::kCPU));
  EXPECT_TRUE(cc.equal(wc.narrow(0, 0, 4)));
  chunk.seqs[0].seq_len = 0;  // without it: a 4-token sequence, short factors
  EXPECT_FALSE(r.cos_sin(chunk, chunk.positions(at::kCPU)).first.equal(wc.narrow(0, 0, 4)));
}

// A decode step reads lengths from the positions alone (what a CUDA graph replays)
// and agrees with the host's per-sequence answer.
TEST(Rope, LongropeDecodeStepsAgreeWithTheHostPath) {
  const Rope r(longrope(), 4, 32);
  const Batch b{{{0, 6, 1}, {1, 7, 1}, {2, 8, 1}, {3, 20, 1}}};
  const at::Tensor pos = b.positions(at::kCPU);
  auto [hc, hs] = r.cos_sin(b, pos, /*decode=*/false);
  auto [dc, ds] = r.cos_sin(b, pos, /*decode=*/true);
  EXPECT_TRUE(hc.equal(dc));
  EXPECT_TRUE(hs.equal(ds));
}

TEST(Rope, RotationPreservesNormAndPositionZeroIsIdentity) {
  Rope r(RopeConfig{}, 8, 128);
  Batch b{{{0, 0, 3}}};
  auto [cos, sin] = r.cos_sin(b, b.positions(at::kCPU));
  at::Tensor x = at::randn({3, 2, 8});
  at::Tensor y = apply_rope(x, cos, sin);
  EXPECT_TRUE(at::allclose(y[0], x[0]));
  EXPECT_TRUE(at::allclose(y.norm(2, -1), x.norm(2, -1), 1e-5, 1e-5));
}

}  // namespace
}  // namespace cascade::stage
