// The int8 decode kernels (LLM.int8 with outliers, and weight-only int8 through the
// decode GEMV) against the exact CPU path of stage/quant.h. Without a GPU, or
// in a build without Cascade's CUDA kernels, only the fallback contract is checked.
#include "stage/kernels/int8_kernels.h"

#include <gtest/gtest.h>

#include "stage/kernels/quant.h"

namespace cascade::stage {
namespace {

double rel_l2(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() / b.to(at::kDouble).norm().item<double>();
}

TEST(Int8Kernels, OnlyForDecodeShapesOnTheGpu) {
  const at::Tensor q = at::zeros({32, 64}, at::kChar), s = at::ones({32});
  const Int8Activation cpu = int8_split(at::ones({1, 64}), 6.0);
  EXPECT_FALSE(int8_gemv_mixed(cpu.xq, cpu.sx, cpu.xo, cpu.cols, q, s).defined());  // CPU
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  const at::Tensor qc = q.cuda(), sc = s.cuda();
  const Int8Activation one = int8_split(at::ones({1, 64}, at::kCUDA), 6.0);
  if (!int8_gemv_mixed(one.xq, one.sx, one.xo, one.cols, qc, sc).defined()) GTEST_SKIP() << "no CUDA kernels";
  const Int8Activation many = int8_split(at::ones({kInt8KernelMaxTokens + 1, 64}, at::kCUDA), 6.0);
  EXPECT_FALSE(int8_gemv_mixed(many.xq, many.sx, many.xo, many.cols, qc, sc).defined());
  const Int8Activation odd = int8_split(at::ones({1, 40}, at::kCUDA), 6.0);
  EXPECT_FALSE(int8_gemv_mixed(odd.xq, odd.sx, odd.xo, odd.cols, at::zeros({32, 40}, at::kChar).cuda(), sc)
                   .defined());  // in % 16 != 0
}

// The one-kernel split gives the ATen path's int8 rows and scales exactly, and the same
// outlier values in the same columns: no outlier, a few, and more columns over the
// threshold than there are slots (the largest ones win).
TEST(Int8Kernels, TheSplitKernelMatchesTheAtenSplit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  at::manual_seed(11);
  // Each outlier column's values, scattered back to [T, K]: comparable whatever the slot order.
  auto dense = [](const Int8Activation& a, int64_t K) {
    const at::Tensor xo = a.xo.cpu(), cols = a.cols.cpu();
    return at::zeros({xo.size(0), K}).index_add_(1, cols, xo);
  };
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    for (int64_t tokens : {1, 4, 8}) {
      for (int64_t many : {0, 3, 20}) {
        at::Tensor x = at::randn({tokens, 2560});
        for (int64_t c = 0; c < many; ++c) x.select(1, 7 + 97 * c).mul_(10 + c);
        x = x.to(t);
        const Int8Activation want = int8_split(x, 6.0);  // CPU: the ATen path
        at::Tensor xq, sx, cols, xo;
        ASSERT_TRUE(int8_split_kernel(x.cuda(), 6.0, kMaxOutlierColumns, &xq, &sx, &cols, &xo)) << "no CUDA kernels?";
        Int8Activation got;
        got.xq = xq, got.sx = sx, got.cols = cols, got.xo = xo;
        const std::string what = std::string(c10::toString(t)) + ", " + std::to_string(tokens) + " tokens, " +
                                 std::to_string(many) + " scaled columns";
        EXPECT_TRUE(at::equal(sx.cpu(), want.sx)) << what;
        EXPECT_TRUE(at::equal(xq.cpu(), want.xq)) << what;
        EXPECT_TRUE(at::equal(dense(got, 2560), dense(want, 2560))) << what;
        EXPECT_EQ(cols.numel(), kMaxOutlierColumns);
      }
    }
  }
  at::Tensor xq, sx, cols, xo;
  EXPECT_FALSE(int8_split_kernel(at::ones({9, 64}, at::kCUDA), 6.0, 16, &xq, &sx, &cols, &xo));  // > 8 tokens
  EXPECT_FALSE(int8_split_kernel(at::ones({1, 8}, at::kCUDA), 6.0, 16, &xq, &sx, &cols, &xo));   // K < slots
  EXPECT_FALSE(xq.defined());
}

// Every token count the kernels take, both paths, odd output sizes, outliers present.
TEST(Int8Kernels, MatchTheExactCpuPath) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  at::manual_seed(7);
  for (int64_t out : {37, 256}) {
    const at::Tensor w = at::randn({out, 1024}).mul_(0.05);
    const Int8Rows r = quantize_rows(w);
    const at::Tensor qc = r.q.cuda(), sc = r.scale.cuda();
    for (int64_t tokens = 1; tokens <= kInt8KernelMaxTokens; ++tokens) {
      at::Tensor x = at::randn({tokens, 1024});
      x.select(1, 100).mul_(25);  // an outlier column
      for (double threshold : {6.0, 0.0}) {
        const Int8Activation a = int8_split(x.cuda(), threshold);
        // Mixed: this kernel; weight-only: the decode GEMV (fused_kernels.h), through int8_linear.
        const at::Tensor got =
            threshold > 0 ? int8_gemv_mixed(a.xq, a.sx, a.xo, a.cols, qc, sc) : int8_linear(a, qc, sc, at::Tensor());
        if (!got.defined()) GTEST_SKIP() << "no CUDA kernels";
        const at::Tensor want = int8_linear(x, r.q, r.scale, at::Tensor(), threshold);  // CPU, exact sums
        EXPECT_LT(rel_l2(got.cpu(), want), 1e-6) << out << " outputs, " << tokens << " tokens, threshold " << threshold;
      }
    }
  }
}

}  // namespace
}  // namespace cascade::stage
