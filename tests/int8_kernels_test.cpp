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
