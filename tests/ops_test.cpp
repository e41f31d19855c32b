#include "stage/kernels/ops.h"

#include <gtest/gtest.h>

#include "stage/model_config.h"

namespace cascade::stage {
namespace {

TEST(Ops, RmsNormNormalisesInFloat32) {
  at::Tensor x = at::tensor({3.f, 4.f}).view({1, 2});
  at::Tensor y = rms_norm(x, at::ones({2}), 0.0);
  EXPECT_NEAR(y[0][0].item<double>(), 3.0 / std::sqrt(12.5), 1e-6);
  EXPECT_EQ(rms_norm(x.to(at::kBFloat16), at::ones({2}, at::kBFloat16), 1e-6).scalar_type(), at::kBFloat16);
}

TEST(Ops, GeluNewIsTheTanhApproximation) {
  at::Tensor x = at::linspace(-4, 4, 33);
  EXPECT_TRUE(at::allclose(activate(x, Activation::kGeluTanh), at::gelu(x, "tanh"), 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(activate(x, Activation::kSilu), x * at::sigmoid(x)));
}

// The fallback past the decode kernels (cuBLAS on the GPU): here a weight the CPU
// kernel declines (a transposed view) takes the same path.
TEST(Ops, ASpentResidualTakesTheProductInPlace) {
  at::manual_seed(0);
  const at::Tensor x = at::randn({5, 8}), w = at::randn({8, 6}).t(), b = at::randn({6});
  const at::Tensor r0 = at::randn({5, 6});
  const at::Tensor want = r0 + at::linear(x, w);
  at::Tensor r = r0.clone();
  const at::Tensor kept = apply_linear_add(x, w, {}, r);
  EXPECT_TRUE(r.equal(r0));
  EXPECT_NE(kept.data_ptr(), r.data_ptr());
  EXPECT_LT((kept - want).abs().max().item<double>(), 1e-5);
  const at::Tensor into = apply_linear_add(x, w, {}, r, /*r_spent=*/true);
  EXPECT_EQ(into.data_ptr(), r.data_ptr());  // the sum is in r's storage
  EXPECT_LT((into - want).abs().max().item<double>(), 1e-5);
  at::Tensor r2 = r0.clone();  // a bias would need a second kernel anyway: r kept
  const at::Tensor biased = apply_linear_add(x, w, b, r2, /*r_spent=*/true);
  EXPECT_TRUE(r2.equal(r0));
  EXPECT_LT((biased - (want + b)).abs().max().item<double>(), 1e-5);
}

TEST(Ops, ActivationNames) {
  EXPECT_EQ(parse_activation("gelu_pytorch_tanh"), Activation::kGeluTanh);
  EXPECT_EQ(parse_activation("silu"), Activation::kSilu);
  EXPECT_THROW(parse_activation("mish"), ModelConfigError);
}

}  // namespace
}  // namespace cascade::stage
