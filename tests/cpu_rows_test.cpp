#include "stage/kernels/cpu_rows.h"

#include <gtest/gtest.h>

#include <cstdio>

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
    if (t != at::kFloat) EXPECT_GE(equal, x.numel() * 99 / 100) << t;  // float32: the sums' last bits differ
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
