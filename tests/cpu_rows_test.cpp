#include "stage/kernels/cpu_rows.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "stage/kernels/cpu/storage.h"
#include "stage/kernels/ops.h"
#include "stage/layers/rope.h"

namespace cascade::stage {
namespace {

// The ATen expressions the CPU passes replace (stage/kernels/ops.cpp, stage/layers/rope.cpp).
at::Tensor aten_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  xf = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return w * xf.to(x.scalar_type());
}

at::Tensor aten_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor c = cos.to(x.scalar_type()).unsqueeze(1), s = sin.to(x.scalar_type()).unsqueeze(1);
  return x * c + at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1) * s;
}

// Elements apart by more than two steps of the dtype at their size: the norm's float32
// sum of squares may add in another order than ATen's, so x * rsqrt may round the other
// way before w multiplies it.
int64_t apart(const at::Tensor& a, const at::Tensor& b, double step) {
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  return ((ad - bd).abs() > (ad.abs().clamp_min(1e-3) * 2 * step)).sum().item<int64_t>();
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The passes' branch-free bfloat16 rounding gives c10's bits: ties to even both ways,
// the largest values rounding up to infinity, subnormals, infinities and NaNs (c10
// gives 0x7fc0 for every NaN).
TEST(CpuStorage, BFloat16RoundingEqualsC10) {
  std::vector<float> v = {0.f,
                          -0.f,
                          1.f,
                          -1.5f,
                          3.14159f,
                          65504.f,
                          1e-40f,
                          -1e-45f,
                          std::numeric_limits<float>::max(),
                          -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          from_bits(0xffc00001u),
                          from_bits(0x7f800001u),
                          from_bits(0x3f808000u),
                          from_bits(0x3f818000u),
                          from_bits(0x3f808001u),
                          from_bits(0x3f80ffffu)};
  for (uint32_t u = 0; u < 200000; ++u) v.push_back(from_bits(u * 21475u + 7u));  // spread over all exponents
  int64_t differ = 0;
  for (float x : v) {
    const uint16_t got = cpu::to_storage<at::BFloat16>(x).x, want = at::BFloat16(x).x;
    if (got != want && ++differ <= 5) {
      ADD_FAILURE() << std::hex << "bits of " << x << ": " << got << ", c10 " << want;
    }
  }
  EXPECT_EQ(differ, 0);
  EXPECT_EQ(cpu::round_to<at::BFloat16>(1.00390625f), 1.0f);       // a tie rounds to the even value
  EXPECT_EQ(cpu::round_to<at::BFloat16>(1.01171875f), 1.015625f);  // and from the odd one up
}

TEST(CpuRows, RmsNormRoundsAsAten) {
  at::manual_seed(1);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor x = at::randn({37, 768}).to(t), w = at::randn({768}).to(t);
    const at::Tensor got = cpu_rms_norm(x, w, 1e-5), want = aten_rms_norm(x, w, 1e-5);
    ASSERT_TRUE(got.defined());
    const double step = t == at::kFloat ? 1e-6 : (t == at::kHalf ? 1.0 / 1024 : 1.0 / 128);
    const int64_t equal = got.eq(want).sum().item<int64_t>();
    std::printf("[ rows ] rms_norm %s: %lld of %lld elements equal to ATen's\n", c10::toString(t),
                static_cast<long long>(equal), static_cast<long long>(x.numel()));
    EXPECT_EQ(apart(got, want, step), 0) << t;
    if (t != at::kFloat) {  // float32: the sums' last bits differ
      EXPECT_GE(equal, x.numel() * 99 / 100) << t;
    }
    EXPECT_TRUE(at::equal(rms_norm(x, w, 1e-5), got)) << "ops.cpp takes this pass on the CPU";
  }
  EXPECT_FALSE(cpu_rms_norm(at::randn({4, 8}), at::randn({8}).to(at::kBFloat16), 1e-5).defined());  // two dtypes
  EXPECT_FALSE(cpu_rms_norm(at::randn({8, 4}).t(), at::randn({8}), 1e-5).defined());                // not contiguous
}

TEST(CpuRows, RopeEqualsAtenBitForBit) {
  at::manual_seed(2);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor qkv = at::randn({19, 7 * 64}).to(t);
    const at::Tensor q = qkv.narrow(1, 64, 4 * 64).view({19, 4, 64});  // rows strided, as a fused projection's
    const at::Tensor cos = at::rand({19, 64}), sin = at::rand({19, 64});
    const at::Tensor got = cpu_rope(q, cos, sin);
    ASSERT_TRUE(got.defined());
    EXPECT_TRUE(at::equal(got, aten_rope(q, cos, sin))) << t;
    EXPECT_TRUE(at::equal(apply_rope(q, cos, sin), got)) << "rope.cpp takes this pass on the CPU";
  }
  EXPECT_FALSE(cpu_rope(at::randn({3, 2, 5}), at::rand({3, 5}), at::rand({3, 5})).defined());  // odd head size
}

}  // namespace
}  // namespace cascade::stage
