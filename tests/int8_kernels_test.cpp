// LLM.int8's split kernel and the decode projections that read its form, against the
// exact CPU path of stage/kernels/quant.h. Without a GPU, or in a build without
// Cascade's CUDA kernels, only the fallback contract is checked.
#include "stage/kernels/int8_kernels.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

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

// The split kernel's list (sx's columns from 1: stage/kernels/int8_kernels.h) against the
// ATen split's outliers: the same columns with the same values, in any order.
void expect_listed(const at::Tensor& sx, const Int8Activation& want, const std::string& what) {
  constexpr int64_t kList = kInt8SplitList;
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
  EXPECT_FALSE(a.ints.defined());
  EXPECT_TRUE(a.xq.defined() && a.cols.defined() && a.xo.defined());
}

// The split kernel gives the ATen path's int8 rows and scales exactly, and the same
// outlier values in the same places: no outlier, a few, more in a token than there are
// slots (its largest win), more with ties at the last one taken (by column, on both
// sides; rows of 10,240 give a thread two vectors), and one token's own.
TEST(Int8Kernels, TheSplitKernelMatchesTheAtenSplit) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(11);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    for (int64_t in : {2560, 10240}) {
      for (int64_t tokens : {1, 4, 8, 17, 32}) {
        for (int64_t many : {0, 3, 20, -1}) {
          at::Tensor x = at::randn({tokens, in});
          // Distinct magnitudes, exact in bf16: which are the largest is never a tie.
          for (int64_t c = 0; c < many; ++c) x.select(1, 7 + 97 * c).fill_(c % 2 ? 10 + c : -10 - c);
          if (many < 0) {  // 10 of 20, then 12 ties of 10 spread over the row: 6 ties taken
            x.clamp_(-3, 3);
            for (int64_t c = 0; c < 10; ++c) x.select(1, in - 1 - 13 * c).fill_(20.0);
            for (int64_t c = 0; c < 12; ++c) x.select(1, 5 + (in / 12) * c).fill_(c % 2 ? 10.0 : -10.0);
          }
          x.index_put_({tokens - 1, 5}, 50.0);
          x = x.to(t);
          const Int8Activation want = int8_split(x, 6.0);  // CPU: the ATen path
          at::Tensor ints, sx;
          ASSERT_TRUE(int8_split_kernel(x.cuda(), 6.0, kMaxOutlierColumns, &ints, &sx));
          const std::string what = std::string(c10::toString(t)) + ", in " + std::to_string(in) + ", " +
                                   std::to_string(tokens) + " tokens, " + std::to_string(many) + " scaled columns";
          ASSERT_EQ(ints.scalar_type(), t) << what;
          ASSERT_EQ(ints.sizes(), x.sizes()) << what;
          EXPECT_TRUE(at::equal(sx.cpu().narrow(1, 0, 1), want.sx)) << what;
          EXPECT_TRUE(at::equal(ints.cpu().to(at::kFloat), want.xq.to(at::kFloat))) << what;
          expect_listed(sx, want, what);
        }
      }
    }
  }
  at::Tensor ints, sx;
  const at::Tensor x = at::ones({2, 64}, at::kCUDA);
  EXPECT_FALSE(int8_split_kernel(at::ones({33, 64}, at::kCUDA), 6.0, 16, &ints, &sx));  // > 32 tokens
  EXPECT_FALSE(int8_split_kernel(x, 6.0, kInt8SplitList + 1, &ints, &sx));              // more than the list
  EXPECT_FALSE(int8_split_kernel(x, 0.0, 16, &ints, &sx));                              // no threshold
  EXPECT_FALSE(ints.defined());
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
// takes (in % 16 == 0, up to 16 tokens), neither takes (ATen's product of the split's form)
// and the split kernel does not take (in % 8 != 0: ATen's split and int8 GEMM), against the
// exact CPU path; float32 x takes the plain GEMV.
TEST(Int8Kernels, TheSplitFormMatchesTheExactCpuPath) {
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
          ASSERT_EQ(a.ints.defined(), in != 1001) << what;
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

// More outliers than slots, with ties at the last one's value: exactly `slots` are
// taken, the tied ones by column, and the tied values left behind go to the int8 row at
// full scale. Token 0: 40 values of 10; token 1: 20 of -10; token 2: 10 of 20, then 12 of 10.
// Every projection equals the split's own decomposition, summed here in float64.
TEST(Int8Kernels, TiedOutliersAreTakenByColumn) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(13);
  constexpr int64_t kIn = 1024, kOut = 2560, kTokens = 13, kSlots = kMaxOutlierColumns;
  const Int8Rows r = quantize_rows(at::randn({kOut, kIn}).mul_(0.05)), r2 = quantize_rows(at::randn({2 * kOut, kIn}));
  Linear l, gu;
  l.w = r.q.cuda(), l.scale = r.scale.cuda(), l.threshold = 6.0;
  gu.w = r2.q.cuda(), gu.scale = r2.scale.cuda(), gu.threshold = 6.0;
  at::Tensor xf = at::randn({kTokens, kIn}).clamp_(-3, 3);
  xf[0].narrow(0, 100, 40).fill_(10.0);
  xf[1].narrow(0, 300, 20).fill_(-10.0);
  xf[2].narrow(0, 500, 10).fill_(20.0);
  xf[2].narrow(0, 600, 12).fill_(10.0);
  const at::Tensor x = xf.to(at::kBFloat16).cuda();
  const Int8Activation a = l.input(x);
  ASSERT_TRUE(a.ints.defined());
  const at::Tensor side = a.sx.cpu(), ints = a.ints.cpu().to(at::kFloat);
  const auto listed = [&](int64_t t) {
    std::vector<int64_t> cols;
    for (int64_t j = 0; j < side[t][1].item<float>(); ++j) cols.push_back(side[t][2 + j].item<int64_t>());
    return cols;
  };
  const auto run = [](int64_t from, int64_t n) {
    std::vector<int64_t> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = from + i;
    return v;
  };
  EXPECT_EQ(listed(0), run(100, kSlots));
  EXPECT_EQ(listed(1), run(300, kSlots));
  std::vector<int64_t> two = run(500, 10), ties = run(600, kSlots - 10);
  two.insert(two.end(), ties.begin(), ties.end());
  EXPECT_EQ(listed(2), two);
  EXPECT_EQ(side[3][1].item<float>(), 0);
  for (int64_t t : {0, 1, 2}) EXPECT_EQ(side[t][0].item<float>(), 10.f / 127.f) << "token " << t;  // the ties left
  EXPECT_EQ(ints[0][100].item<float>(), 0);
  EXPECT_EQ(ints[0][100 + kSlots].item<float>(), 127);
  EXPECT_EQ(ints[1][300 + kSlots].item<float>(), -127);
  EXPECT_EQ(ints[2][600 + kSlots - 10].item<float>(), 127);
  // y = scale (sx[t][0] ints[t] . q + the listed values . their columns of q), float64.
  const auto decomposed = [&](const Int8Rows& w) {
    const at::Tensor q = w.q.to(at::kDouble);
    at::Tensor y = at::linear(ints.to(at::kDouble), q).mul_(side.narrow(1, 0, 1).to(at::kDouble));
    for (int64_t t = 0; t < kTokens; ++t)
      for (int64_t j = 0; j < side[t][1].item<float>(); ++j)
        y[t].add_(q.select(1, side[t][2 + j].item<int64_t>()) * side[t][2 + kInt8SplitList + j].item<double>());
    return y.mul_(w.scale.to(at::kDouble).unsqueeze(0));
  };
  EXPECT_LT(rel_l2(l(a).cpu(), decomposed(r)), 4e-3);
  const at::Tensor both = decomposed(r2), g = both.narrow(1, 0, kOut), u = both.narrow(1, kOut, kOut);
  EXPECT_LT(rel_l2(gu.gated(a, Activation::kSilu).cpu(), g * at::sigmoid(g) * u), 1.5e-2);
}

}  // namespace
}  // namespace cascade::stage
