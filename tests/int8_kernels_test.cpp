// LLM.int8's split kernel and the decode projections that read its pairs, against the
// exact CPU path of stage/kernels/quant.h. Without a GPU, or in a build without
// Cascade's CUDA kernels, only the fallback contract is checked.
#include "stage/kernels/int8_kernels.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "stage/kernels/ops.h"
#include "stage/kernels/quant.h"
#include "stage/layers/linear.h"

namespace cascade::stage {
namespace {

double rel_l2(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() / b.to(at::kDouble).norm().item<double>();
}

bool kernels() {
  at::Tensor p, s;
  return at::hasCUDA() && int8_split_kernel(at::ones({1, 64}, at::kCUDA), 6.0, 16, &p, &s);
}

// The ATen split's values in the pairs form: row t its int8 row, row T + t its outliers'
// values scattered back to their columns.
at::Tensor pairs_of(const Int8Activation& a) {
  const int64_t T = a.xq.size(0), K = a.xq.size(1);
  const at::Tensor outliers = at::zeros({T, K}).scatter_(1, a.cols.cpu(), a.xo.cpu());
  return at::cat({a.xq.cpu().to(at::kFloat), outliers}, 0);
}

// The split kernel's list (sx's columns from 1: stage/kernels/int8_kernels.h) against the
// ATen split's outliers: the same columns with the same values, in any order.
void expect_listed(const at::Tensor& sx, const Int8Activation& want, const std::string& what) {
  constexpr int64_t kList = (kInt8SplitRow - 2) / 2;
  const at::Tensor side = sx.cpu(), cols = want.cols.cpu(), xo = want.xo.cpu();
  for (int64_t t = 0; t < side.size(0); ++t) {
    std::map<int64_t, float> got, expected;
    const auto n = static_cast<int64_t>(side[t][1].item<float>());
    ASSERT_LE(n, kList) << what;
    for (int64_t j = 0; j < n; ++j)
      got[static_cast<int64_t>(side[t][2 + j].item<float>())] = side[t][2 + kList + j].item<float>();
    for (int64_t j = 0; j < cols.size(1); ++j)
      if (xo[t][j].item<float>() != 0) expected[cols[t][j].item<int64_t>()] = xo[t][j].item<float>();
    EXPECT_EQ(got, expected) << what << ", token " << t;
  }
}

TEST(Int8Kernels, CpuTensorsTakeTheAtenSplit) {
  at::Tensor p, s;
  EXPECT_FALSE(int8_split_kernel(at::ones({1, 64}), 6.0, 16, &p, &s));
  EXPECT_FALSE(p.defined());
  const Int8Activation a = int8_split(at::ones({2, 64}), 6.0);
  EXPECT_FALSE(a.pairs.defined());
  EXPECT_TRUE(a.xq.defined() && a.cols.defined() && a.xo.defined());
}

// The split kernel gives the ATen path's int8 rows and scales exactly, and the same
// outlier values in the same places: no outlier, a few, more in a token than there are
// slots (its largest win), and one token's own.
TEST(Int8Kernels, TheSplitKernelMatchesTheAtenSplit) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(11);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    for (int64_t tokens : {1, 4, 8, 17, 32}) {
      for (int64_t many : {0, 3, 20}) {
        at::Tensor x = at::randn({tokens, 2560});
        // Distinct magnitudes, exact in bf16: which are the largest is never a tie.
        for (int64_t c = 0; c < many; ++c) x.select(1, 7 + 97 * c).fill_(c % 2 ? 10 + c : -10 - c);
        x.index_put_({tokens - 1, 5}, 50.0);
        x = x.to(t);
        const Int8Activation want = int8_split(x, 6.0);  // CPU: the ATen path
        at::Tensor pairs, sx;
        ASSERT_TRUE(int8_split_kernel(x.cuda(), 6.0, kMaxOutlierColumns, &pairs, &sx));
        const std::string what = std::string(c10::toString(t)) + ", " + std::to_string(tokens) + " tokens, " +
                                 std::to_string(many) + " scaled columns";
        ASSERT_EQ(pairs.scalar_type(), t) << what;
        EXPECT_TRUE(at::equal(sx.cpu().narrow(1, 0, 1), want.sx)) << what;
        EXPECT_TRUE(at::equal(pairs.cpu().to(at::kFloat), pairs_of(want))) << what;
        expect_listed(sx, want, what);
      }
    }
  }
  at::Tensor pairs, sx;
  EXPECT_FALSE(int8_split_kernel(at::ones({33, 64}, at::kCUDA), 6.0, 16, &pairs, &sx));  // > 32 tokens
  EXPECT_FALSE(pairs.defined());
}

// A token's outliers are its own (stage/kernels/quant.h): in a batch with another token's
// outlier, each token's projection is bit for bit what it gets alone.
TEST(Int8Kernels, EachTokenGetsWhatItGetsAlone) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(12);
  const Int8Rows r = quantize_rows(at::randn({512, 1024}).mul_(0.05));
  Linear l;
  l.w = r.q.cuda(), l.scale = r.scale.cuda(), l.threshold = 6.0;
  for (at::ScalarType t : {at::kBFloat16, at::kFloat}) {
    at::Tensor x = at::randn({5, 1024});
    x.index_put_({3, 40}, 30.0);
    x = x.to(t).cuda();
    const at::Tensor batch = l(l.input(x));
    for (int64_t i = 0; i < 5; ++i)
      EXPECT_TRUE(at::equal(batch[i], l(l.input(x.narrow(0, i, 1)))[0])) << c10::toString(t) << ", token " << i;
  }
}

// A projection of int8 rows with outliers through the layer's own calls (Linear: plain,
// residual add, gated), for inputs the tensor-core kernel takes (in % 64 == 0), the GEMV
// takes (in % 16 == 0, up to 16 tokens), neither takes (ATen's product of the pairs) and
// the split kernel does not take (in % 8 != 0: ATen's split and int8 GEMM), against the
// exact CPU path; float32 x takes the plain GEMV.
TEST(Int8Kernels, PairsMatchTheExactCpuPath) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(7);
  for (int64_t in : {1024, 1040, 1000, 1001, 4096}) {  // 4096: the tensor-core kernel splits K
    for (int64_t out : {37, 2560}) {
      const Int8Rows r = quantize_rows(at::randn({out, in}).mul_(0.05)), r2 = quantize_rows(at::randn({2 * out, in}));
      Linear l, gu;
      l.w = r.q.cuda(), l.scale = r.scale.cuda(), l.threshold = 6.0;
      gu.w = r2.q.cuda(), gu.scale = r2.scale.cuda(), gu.threshold = 6.0;
      for (int64_t tokens : {1, 3, 8, 13, 32}) {
        at::Tensor xf = at::randn({tokens, in});
        xf.select(1, 100).mul_(25);  // an outlier column
        for (at::ScalarType t : {at::kBFloat16, at::kFloat}) {
          const at::Tensor x = xf.to(t);
          const std::string what = std::string(c10::toString(t)) + ", in " + std::to_string(in) + ", out " +
                                   std::to_string(out) + ", " + std::to_string(tokens) + " tokens";
          const Int8Activation a = l.input(x.cuda());
          ASSERT_EQ(a.pairs.defined(), in != 1001) << what;
          const at::Tensor want = int8_linear(x.to(at::kFloat), r.q, r.scale, {}, 6.0);  // CPU, exact sums
          const at::Tensor got = l(a);
          ASSERT_EQ(got.scalar_type(), t) << what;
          EXPECT_LT(rel_l2(got.cpu(), want), t == at::kFloat ? 1e-6 : 4e-3) << what;
          if (t == at::kFloat) continue;
          const at::Tensor res = at::randn({tokens, out}).to(t);
          EXPECT_LT(rel_l2(l.add_to(res.cuda(), a).cpu(), res.to(at::kFloat) + want), 8e-3) << "residual, " << what;
          const at::Tensor both = int8_linear(x.to(at::kFloat), r2.q, r2.scale, {}, 6.0);
          const at::Tensor g = both.narrow(1, 0, out), u = both.narrow(1, out, out);
          const at::Tensor silu = gu.gated(gu.input(x.cuda()), Activation::kSilu);
          EXPECT_LT(rel_l2(silu.cpu(), g * at::sigmoid(g) * u), 1.5e-2) << "gated, " << what;
        }
      }
    }
  }
}

// More tied outliers than the list holds (40 columns of 10.0 in token 0; 20 in token 1,
// which the list holds): the tensor-core kernel takes token 0's outlier row instead, and
// every token still gets the pairs' product, here through float32 on the CPU.
TEST(Int8Kernels, TiedOutliersPastTheListTakeTheOutlierRow) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(13);
  constexpr int64_t kIn = 1024, kOut = 2560, kTokens = 13;
  const Int8Rows r = quantize_rows(at::randn({kOut, kIn}).mul_(0.05)), r2 = quantize_rows(at::randn({2 * kOut, kIn}));
  Linear l, gu;
  l.w = r.q.cuda(), l.scale = r.scale.cuda(), l.threshold = 6.0;
  gu.w = r2.q.cuda(), gu.scale = r2.scale.cuda(), gu.threshold = 6.0;
  at::Tensor xf = at::randn({kTokens, kIn});
  xf[0].narrow(0, 100, 40).fill_(10.0);
  xf[1].narrow(0, 300, 20).fill_(-10.0);
  const at::Tensor x = xf.to(at::kBFloat16).cuda();
  const Int8Activation a = l.input(x);
  ASSERT_TRUE(a.pairs.defined());
  const at::Tensor side = a.sx.cpu();
  EXPECT_EQ(side[0][1].item<float>(), static_cast<float>((kInt8SplitRow - 2) / 2 + 1));  // overflowed: none listed
  EXPECT_EQ(side[1][1].item<float>(), 20);
  // The pairs' sums in float32: y = scale (sx p[t] + p[T + t]).
  const auto pairs_product = [&](const Int8Rows& w) {
    const at::Tensor p = at::linear(a.pairs.cpu().to(at::kFloat), w.q.to(at::kFloat)).view({2, kTokens, -1});
    return p[0].mul(side.narrow(1, 0, 1)).add_(p[1]).mul_(w.scale.unsqueeze(0));
  };
  EXPECT_LT(rel_l2(l(a).cpu(), pairs_product(r)), 4e-3);
  const at::Tensor both = pairs_product(r2), g = both.narrow(1, 0, kOut), u = both.narrow(1, kOut, kOut);
  EXPECT_LT(rel_l2(gu.gated(a, Activation::kSilu).cpu(), g * at::sigmoid(g) * u), 1.5e-2);
  for (int64_t t : {0, 1}) {  // each token alone: the same pairs, so the same product
    const at::Tensor alone = l(l.input(x.narrow(0, t, 1))).cpu();
    EXPECT_LT(rel_l2(alone, pairs_product(r).narrow(0, t, 1)), 4e-3) << "token " << t;
  }
}

}  // namespace
}  // namespace cascade::stage
