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

TEST(Ops, ActivationNames) {
  EXPECT_EQ(parse_activation("gelu_pytorch_tanh"), Activation::kGeluTanh);
  EXPECT_EQ(parse_activation("silu"), Activation::kSilu);
  EXPECT_THROW(parse_activation("mish"), ModelConfigError);
}

}  // namespace
}  // namespace cascade::stage
