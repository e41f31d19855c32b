#include "stage/layers/linear.h"

#include "tests/layer_test_util.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

TEST(Linear, FloatLinearAndConv1D) {
  at::manual_seed(0);
  test::Weights w;
  w.add("l.weight", {6, 4});
  w.add("l.bias", {6});
  w.add("c.weight", {4, 6});  // Conv1D: [in, out]
  w.add("c.bias", {6});
  const at::Tensor x = at::randn({3, 4});
  const Linear l = Linear::load(w.source(), "l", 6, 4, true);
  EXPECT_FALSE(l.int8());
  EXPECT_LT(test::max_abs_diff(l(x), at::linear(x, w.t["l.weight"], w.t["l.bias"])), 1e-6);
  const Linear c = Linear::load(w.source(), "c", 6, 4, true, /*conv1d=*/true);
  EXPECT_LT(test::max_abs_diff(c(x), x.matmul(w.t["c.weight"]) + w.t["c.bias"]), 1e-6);
  const Linear nb = Linear::load(w.source(), "l", 6, 4, false);
  EXPECT_FALSE(nb.b.defined());
  EXPECT_LT(test::max_abs_diff(nb(x), at::linear(x, w.t["l.weight"])), 1e-6);
}

TEST(Linear, Int8WeightsAsTheLoaderQuantizedThem) {
  at::manual_seed(1);
  test::Weights w;
  w.threshold = 6.0;
  const at::Tensor f = at::randn({32, 64});
  const Int8Rows r = quantize_rows(f);
  w.t["l.weight"] = r.q;
  w.t["l.weight:scale"] = r.scale;
  const Linear l = Linear::load(w.source(), "l", 32, 64, false);
  ASSERT_TRUE(l.int8());
  EXPECT_EQ(l.threshold, 6.0);
  at::Tensor x = at::randn({2, 64});
  x.select(1, 3).mul_(20);  // an outlier column
  EXPECT_TRUE(l(x).equal(int8_linear(x, r.q, r.scale, {}, 6.0)));
  const at::Tensor exact = at::linear(x, f);
  EXPECT_LT((l(x) - exact).norm().item<double>() / exact.norm().item<double>(), 0.02);  // relative L2
}

TEST(Linear, FuseConcatenatesPartsThatShareAnInput) {
  at::manual_seed(2);
  test::Weights w;
  for (const char* n : {"q", "k", "v"}) {
    w.add(std::string(n) + ".weight", {4, 8});
    w.add(std::string(n) + ".bias", {4});
  }
  Linear q = Linear::load(w.source(), "q", 4, 8, true), k = Linear::load(w.source(), "k", 4, 8, true),
         v = Linear::load(w.source(), "v", 4, 8, true);
  const at::Tensor x = at::randn({3, 8});
  const at::Tensor want = at::cat({q(x), k(x), v(x)}, 1);
  const Linear qkv = Linear::fuse({&q, &k, &v});
  ASSERT_TRUE(qkv.defined());
  EXPECT_FALSE(q.defined());  // the parts gave their weights up
  EXPECT_LT(test::max_abs_diff(qkv(x), want), 1e-6);

  Linear a = Linear::load(w.source(), "q", 4, 8, true), b = Linear::load(w.source(), "k", 4, 8, false);
  EXPECT_FALSE(Linear::fuse({&a, &b}).defined());  // one biased, one not: left apart
  EXPECT_TRUE(a.defined() && b.defined());
}

// int8 rows fuse with their scales (q/k/v, gate/up on a GPU), and the fused projection
// gives what the parts give: the int8 sums are per row, so exactly.
TEST(Linear, Int8PartsFuseAndGate) {
  at::manual_seed(3);
  for (double threshold : {0.0, 6.0}) {
    test::Weights w;
    w.threshold = threshold;
    for (const char* n : {"g", "u"}) {
      const Int8Rows r = quantize_rows(at::randn({16, 32}));
      w.t[std::string(n) + ".weight"] = r.q;
      w.t[std::string(n) + ".weight:scale"] = r.scale;
    }
    Linear g = Linear::load(w.source(), "g", 16, 32, false), u = Linear::load(w.source(), "u", 16, 32, false);
    at::Tensor x = at::randn({3, 32});
    x.select(1, 5).mul_(20);  // an outlier column
    const at::Tensor gx = g(x), ux = u(x);
    const Linear gu = Linear::fuse({&g, &u});
    ASSERT_TRUE(gu.defined() && gu.int8()) << threshold;
    EXPECT_EQ(gu.threshold, threshold);
    EXPECT_TRUE(gu(x).equal(at::cat({gx, ux}, 1))) << threshold;
    const at::Tensor want = activate(gx, Activation::kSilu) * ux;
    // (ATen's vectorised SiLU may round a strided column differently in the last bit.)
    EXPECT_LT(test::max_abs_diff(gu.gated(gu.input(x), Activation::kSilu), want), 1e-6) << threshold;
  }
  test::Weights w;
  w.add("f.weight", {16, 32});
  const Int8Rows r = quantize_rows(at::randn({16, 32}));
  w.t["i.weight"] = r.q;
  w.t["i.weight:scale"] = r.scale;
  Linear f = Linear::load(w.source(), "f", 16, 32, false), i = Linear::load(w.source(), "i", 16, 32, false);
  EXPECT_FALSE(Linear::fuse({&f, &i}).defined());  // float and int8: left apart
  Linear j = Linear::load(w.source(), "i", 16, 32, false);
  j.threshold = 6.0;
  EXPECT_FALSE(Linear::fuse({&i, &j}).defined());  // two thresholds: left apart
}

TEST(Linear, ShapesAreCheckedByTheSource) {
  test::Weights w;
  w.add("l.weight", {6, 4});
  EXPECT_THROW(Linear::load(w.source(), "l", 6, 4, /*bias=*/true), std::out_of_range);  // no l.bias
}

}  // namespace
}  // namespace cascade::stage
