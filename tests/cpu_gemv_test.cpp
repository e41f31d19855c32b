// The CPU decode GEMVs against float64 products of the same inputs, for every
// instruction set this CPU runs, every weight type, token counts on both sides of each
// tile shape, and lengths with and without a tail after the last vector block.
#include "stage/kernels/cpu_gemv.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <vector>

#include "stage/kernels/ops.h"

namespace cascade::stage {
namespace {

// The largest error of got against want, each element's relative to the sum of the
// magnitudes that made it (`size`), so that cancellation in a sum does not count.
double err_by_size(const at::Tensor& got, const at::Tensor& want, const at::Tensor& size) {
  return ((got.to(at::kDouble) - want).abs() / size.clamp_min(1e-30)).max().item<double>();
}

// Relative error of got against want, as a norm over the whole output.
double rel_err(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kDouble) - want).norm().item<double>() / std::max(want.norm().item<double>(), 1e-30);
}

// A tolerance for results rounded to `t` from float32 sums.
double tol(at::ScalarType t) { return t == at::kBFloat16 ? 8e-3 : t == at::kHalf ? 1e-3 : 2e-6; }

class CpuGemv : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    before_ = cpu_gemv_isa();
    set_cpu_gemv_isa(GetParam());
  }
  void TearDown() override { set_cpu_gemv_isa(before_); }
  std::string before_;
};

TEST_P(CpuGemv, LinearWithBiasAndResidualMatchesFloat64) {
  at::manual_seed(1);
  struct Case {
    at::ScalarType x, w;
  };
  for (const Case c : {Case{at::kFloat, at::kFloat}, Case{at::kBFloat16, at::kBFloat16}, Case{at::kHalf, at::kHalf},
                       Case{at::kFloat, at::kBFloat16}, Case{at::kFloat, at::kHalf}}) {
    for (int64_t K : {64, 200, 1000}) {  // 200 and 1000 leave a tail after the last 32 or 64
      for (int64_t N : {1, 17, 40}) {
        const at::Tensor w = at::randn({N, K}).to(c.w), b = at::randn({N}).to(c.x);
        for (int64_t T : {1, 2, 3, 4, 5, 8, 16, 21}) {
          const at::Tensor x = at::randn({T, K}).to(c.x), r = at::randn({T, N}).to(c.x);
          const at::Tensor got = cpu_linear(x, w, b, r);
          ASSERT_TRUE(got.defined());
          ASSERT_EQ(got.scalar_type(), c.x);
          ASSERT_EQ(got.sizes(), at::IntArrayRef({T, N}));
          const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble), bd = b.to(at::kDouble),
                           rd = r.to(at::kDouble);
          const at::Tensor size = at::linear(xd.abs(), wd.abs());
          EXPECT_LE(err_by_size(got, at::linear(xd, wd, bd) + rd, size + bd.abs() + rd.abs()), tol(c.x))
              << c.x << " x " << c.w << " K " << K << " N " << N << " T " << T;
          const at::Tensor plain = cpu_linear(x, w, {});
          ASSERT_TRUE(plain.defined());
          EXPECT_LE(err_by_size(plain, at::linear(xd, wd), size), tol(c.x));
        }
      }
    }
  }
}

TEST_P(CpuGemv, GatedProductMatchesFloat64ForEveryActivation) {
  at::manual_seed(2);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    const int64_t I = 23, K = 136;
    const at::Tensor w = at::randn({2 * I, K}).div_(8).to(t);
    for (Activation a : {Activation::kSilu, Activation::kRelu, Activation::kGelu, Activation::kGeluTanh}) {
      for (int64_t T : {1, 2}) {
        const at::Tensor x = at::randn({T, K}).to(t);
        const at::Tensor gu = at::linear(x.to(at::kDouble), w.to(at::kDouble));
        const at::Tensor want = activate(gu.narrow(1, 0, I), a) * gu.narrow(1, I, I);
        const at::Tensor got = cpu_gated_linear(x, w, static_cast<int>(a));
        ASSERT_TRUE(got.defined());
        ASSERT_EQ(got.sizes(), at::IntArrayRef({T, I}));
        EXPECT_LE(rel_err(got, want), tol(t)) << t << " activation " << static_cast<int>(a) << " T " << T;
      }
    }
  }
}

// Gate and up apart (a checkpoint's own tensors, as the CPU keeps them) give the fused
// form's bits, and each result is rounded as ATen's linear, activation and product round
// it: against that path, at most one bf16 rounding step apart.
TEST_P(CpuGemv, GatedProductOfSeparateGateAndUpRoundsAsAten) {
  at::manual_seed(6);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    const int64_t I = 40, K = 264, T = 20;  // two chunks of tokens
    const at::Tensor gate = at::randn({I, K}).div_(8).to(t), up = at::randn({I, K}).div_(8).to(t);
    const at::Tensor x = at::randn({T, K}).to(t);
    const at::Tensor got = cpu_gated_linear(x, gate, up, 0);
    ASSERT_TRUE(got.defined());
    EXPECT_TRUE(at::equal(got, cpu_gated_linear(x, at::cat({gate, up}), 0))) << t;
    const at::Tensor aten = at::silu(cpu_linear(x, gate, {})) * cpu_linear(x, up, {});
    const double err = (got.to(at::kDouble) - aten.to(at::kDouble)).abs().max().item<double>();
    const double ulp = t == at::kFloat ? 1e-6 : std::ldexp(1.0, -7);  // a bf16 step near 1
    EXPECT_LE(err, 2 * ulp * std::max(1.0, aten.abs().max().item<double>())) << t;
    EXPECT_FALSE(cpu_gated_linear(x, gate, up.to(at::kHalf), 0).defined());  // two types
  }
}

TEST_P(CpuGemv, Int8WeightOnlyMatchesFloat64) {
  at::manual_seed(3);
  for (int64_t K : {128, 776}) {
    const at::Tensor q = at::randint(-127, 128, {37, K}).to(at::kChar), scale = at::rand({37}).add_(0.01);
    for (int64_t T : {1, 3, 16}) {
      for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
        const at::Tensor x = at::randn({T, K}).to(t);
        const at::Tensor got = cpu_int8_linear(x, q, scale);
        ASSERT_TRUE(got.defined());
        ASSERT_EQ(got.scalar_type(), at::kFloat);
        const at::Tensor want = at::linear(x.to(at::kDouble), q.to(at::kDouble)) * scale.to(at::kDouble);
        EXPECT_LE(rel_err(got, want), 2e-6) << "K " << K << " T " << T;
      }
    }
  }
}

// A token's result is the same bits alone and in a batch of 40 (three chunks), so a
// sequence's tokens do not depend on what shares its step.
TEST_P(CpuGemv, ATokensResultDoesNotDependOnItsBatch) {
  at::manual_seed(5);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    const at::Tensor w = at::randn({70, 200}).to(t), x = at::randn({40, 200}).to(t), r = at::randn({40, 70}).to(t);
    const at::Tensor q = at::randint(-127, 128, {70, 200}).to(at::kChar), scale = at::rand({70});
    const at::Tensor all = cpu_linear(x, w, {}, r), gated = cpu_gated_linear(x, w, 0),
                     int8 = cpu_int8_linear(x, q, scale);
    for (int64_t i : {0, 17, 39}) {
      EXPECT_TRUE(at::equal(cpu_linear(x.narrow(0, i, 1), w, {}, r.narrow(0, i, 1)), all.narrow(0, i, 1))) << t << i;
      EXPECT_TRUE(at::equal(cpu_gated_linear(x.narrow(0, i, 1), w, 0), gated.narrow(0, i, 1))) << t << i;
      EXPECT_TRUE(at::equal(cpu_int8_linear(x.narrow(0, i, 1), q, scale), int8.narrow(0, i, 1))) << t << i;
    }
  }
}

TEST(CpuGemvBound, ReadBandwidthIsMeasured) {
  const double gbs = cpu_read_bandwidth(int64_t{64} << 20, 2);
  EXPECT_GT(gbs, 0.1);  // any machine reads 64 MiB faster than 0.1 GB/s
  EXPECT_LT(gbs, 1e5);
}

TEST_P(CpuGemv, ThreadCountDoesNotChangeTheResult) {
  at::manual_seed(4);
  // 8 MiB of bf16 rows, a ragged last block: past one task, so the rows are handed out
  // to threads in runs; a block skipped or summed twice into another's rows differs.
  const at::Tensor w = at::randn({4099, 1024}).to(at::kBFloat16), gate = at::randn({2051, 1024}).to(at::kBFloat16);
  const at::Tensor q = at::randint(-127, 128, {4099, 1024}).to(at::kChar), scale = at::rand({4099}).add_(0.01);
  const int before = at::get_num_threads();
  for (const int64_t tokens : {1, 5, 17}) {
    const at::Tensor x = at::randn({tokens, 1024}).to(at::kBFloat16);
    std::vector<at::Tensor> by_threads[2];
    for (const int threads : {1, 4}) {
      at::set_num_threads(threads);
      by_threads[threads == 4].push_back(cpu_linear(x, w, {}));
      by_threads[threads == 4].push_back(cpu_gated_linear(x, gate, gate.flip(0).contiguous(), 0));
      by_threads[threads == 4].push_back(cpu_int8_linear(x, q, scale));
    }
    for (size_t i = 0; i < by_threads[0].size(); ++i)  // each row is summed by one thread, in one order
      EXPECT_TRUE(at::equal(by_threads[0][i], by_threads[1][i])) << "product " << i << ", " << tokens << " tokens";
  }
  at::set_num_threads(before);
}

INSTANTIATE_TEST_SUITE_P(EveryIsaThisCpuRuns, CpuGemv, ::testing::ValuesIn(cpu_gemv_isas()),
                         [](const auto& info) { return info.param; });

TEST(CpuGemvDispatch, ShapesTheKernelsDoNotTakeGoToAten) {
  const at::Tensor x = at::randn({1, 64});
  EXPECT_FALSE(cpu_linear(x, at::randn({64, 8}).t(), {}).defined());              // not contiguous
  EXPECT_FALSE(cpu_linear(x, at::randn({8, 32}), {}).defined());                  // in differs
  EXPECT_FALSE(cpu_linear(x, at::randn({8, 64}).to(at::kDouble), {}).defined());  // float64 weight
  EXPECT_FALSE(cpu_linear(x, at::randn({8, 64}), at::randn({7})).defined());      // bias of the wrong length
  EXPECT_FALSE(cpu_gated_linear(x, at::randn({7, 64}), 0).defined());             // odd rows for gate + up
  EXPECT_FALSE(cpu_int8_linear(x, at::randn({8, 64}), at::ones({8})).defined());  // not int8
  EXPECT_TRUE(cpu_linear(x, at::randn({8, 64}), {}).defined());
}

TEST(CpuGemvDispatch, AnIsaThisCpuCannotRunIsRefusedByName) {
  try {
    set_cpu_gemv_isa("sse9");
    FAIL() << "accepted an unknown instruction set";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'sse9'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("generic"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cpu_gemv_isas().back(), "generic");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512bf16")) {
    EXPECT_EQ(cpu_gemv_isas().front(), "avx512bf16");
  }
#endif
  if (std::getenv("CASCADE_CPU_ISA") == nullptr) {
    EXPECT_EQ(cpu_gemv_isa(), cpu_gemv_isas().front());  // the best this CPU runs
  }
}

// Decode attention's bf16 matmul shapes (q k^T, then p v) go to oneDNN, which uses AMX where CPUID reports it. On a CPU
// (or VM) where Linux does not grant the AMX state, that was SIGILL: this process would die here.
// CASCADE_TEST_SKIP_AMX_SETUP=1 shows the crash on such a machine.
TEST(CpuMatrixUnits, Bf16AttentionMatmulsRunAfterSetup) {
  if (!std::getenv("CASCADE_TEST_SKIP_AMX_SETUP")) {
    const std::string what = enable_cpu_matrix_units();
    std::cout << "AMX: " << (what.empty() ? "not on this CPU" : what) << "\n";
    EXPECT_EQ(enable_cpu_matrix_units(), what);  // asks once
  }
  at::manual_seed(0);
  at::set_num_threads(1);
  // [kv_heads, max_seq_len, head_dim] as the cache holds them; head_dim 80 (hidden 2560,
  // 32 heads) is a shape that crashed on this project's VM at len 62.
  const at::Tensor keys = at::randn({32, 2048, 80}).to(at::kBFloat16);
  for (int64_t len = 1; len <= 128; ++len) {
    const at::Tensor q = at::randn({32, 1, 80}).to(at::kBFloat16);
    const at::Tensor k = keys.narrow(1, 0, len);
    const at::Tensor s = at::matmul(q, k.transpose(1, 2));                                    // scores [32, 1, len]
    const at::Tensor o = at::matmul(at::softmax(s.to(at::kFloat), -1).to(at::kBFloat16), k);  // [32, 1, 80]
    const at::Tensor want = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(1, 2));
    EXPECT_TRUE(at::allclose(s.to(at::kFloat), want, 2e-2, 0.5))
        << len << ": " << (s.to(at::kFloat) - want).abs().max();
    EXPECT_EQ(o.sizes(), (std::vector<int64_t>{32, 1, 80}));
  }
}

}  // namespace
}  // namespace cascade::stage
