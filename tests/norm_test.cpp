#include "stage/layers/norm.h"

#include "tests/layer_test_util.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

TEST(Norm, EachKindAsHuggingFaceComputesIt) {
  at::manual_seed(0);
  test::Weights w;
  w.add("n.weight", {16});
  w.add("n.bias", {16});
  const at::Tensor x = at::randn({5, 16}) * 3;
  const at::Tensor rms = x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-6);

  EXPECT_LT(test::max_abs_diff(Norm::load(w.source(), "n", 16, NormKind::kRms, 1e-6)(x), rms * w.t["n.weight"]), 1e-5);
  // Gemma: scaled by (1 + w), so a zero weight is the identity scale.
  EXPECT_LT(
      test::max_abs_diff(Norm::load(w.source(), "n", 16, NormKind::kRmsOnePlus, 1e-6)(x), rms * (1 + w.t["n.weight"])),
      1e-5);
  const at::Tensor ln = at::layer_norm(x, {16}, w.t["n.weight"], w.t["n.bias"], 1e-5);
  EXPECT_LT(test::max_abs_diff(Norm::load(w.source(), "n", 16, NormKind::kLayer, 1e-5)(x), ln), 1e-6);
}

TEST(Norm, OnePlusRoundsOnceInTheComputeDtype) {
  // The (1 + w) product happens in float32 before the cast: in bfloat16 the result
  // equals the float32 result rounded once.
  at::manual_seed(1);
  test::Weights w;
  w.add("n.weight", {64});
  const at::Tensor x = at::randn({3, 64});
  const at::Tensor f32 = Norm::load(w.source(), "n", 64, NormKind::kRmsOnePlus, 1e-6)(x);
  test::Weights wb;
  wb.t["n.weight"] = w.t["n.weight"].to(at::kBFloat16);
  const at::Tensor bf = Norm::load(wb.source(), "n", 64, NormKind::kRmsOnePlus, 1e-6)(x.to(at::kBFloat16));
  EXPECT_EQ(bf.scalar_type(), at::kBFloat16);
  EXPECT_LT(test::max_abs_diff(bf, f32), 0.05);
}

TEST(Norm, NormModuleRunsTheNorm) {
  test::Weights w;
  w.add("model.norm.weight", {8});
  const at::Tensor x = at::randn({2, 8});
  NormModule m(Norm::load(w.source(), "model.norm", 8, NormKind::kRms, 1e-6));
  const Batch b{{{0, 0, 2}}};
  StepContext ctx{b, {}, nullptr, {}, {}, {}};
  EXPECT_TRUE(m.forward(x, ctx).equal(Norm::load(w.source(), "model.norm", 8, NormKind::kRms, 1e-6)(x)));
}

}  // namespace
}  // namespace cascade::stage
