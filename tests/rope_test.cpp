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
