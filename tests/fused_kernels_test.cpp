// The fused RMSNorm and RoPE kernels against the ATen ops they replace (run on the CPU,
// whose float and bf16 rounding is the same). Without a GPU, or in a build without
// Cascade's CUDA kernels, only the fallback contract is checked.
#include "stage/kernels/fused_kernels.h"

#include <gtest/gtest.h>

#include "stage/kernels/ops.h"
#include "stage/kernels/quant.h"
#include "stage/layers/rope.h"

namespace cascade::stage {
namespace {

bool kernels() {
  return at::hasCUDA() && fused_rms_norm(at::ones({1, 8}, at::kCUDA), at::ones({8}, at::kCUDA), 1e-6).defined();
}

// ||got - want|| / ||want||: got from the GPU, want in float64 on the CPU.
double rel(const at::Tensor& got, const at::Tensor& want) {
  return (got.cpu().to(at::kDouble) - want).norm().item<double>() / want.norm().item<double>();
}

// The residual and gated (silu) epilogues of x [tokens, in] against float64 references:
// want = the plain projection's, w2d [2 out, in] the gate/up weights as the kernel
// multiplies them; w, w2 on the GPU with their int8 scales sc, s2 (or undefined), b the
// bias, r [tokens, out] the residual.
void expect_residual_and_gated(const at::Tensor& x, const at::Tensor& b, const at::Tensor& r, const at::Tensor& w,
                               const at::Tensor& sc, const at::Tensor& w2, const at::Tensor& s2, const at::Tensor& want,
                               const at::Tensor& w2d, const std::string& what) {
  const at::Tensor sum = fused_linear_add(x.cuda(), w, b.cuda(), r.cuda(), sc);
  ASSERT_TRUE(sum.defined()) << what;
  EXPECT_LE(rel(sum, r.to(at::kDouble) + want), 8e-3) << "residual, " << what;
  const int64_t out = w2d.size(0) / 2;
  const at::Tensor gu = at::linear(x.to(at::kDouble), w2d), g = gu.narrow(1, 0, out), u = gu.narrow(1, out, out);
  const at::Tensor silu = fused_gated_linear(x.cuda(), w2, static_cast<int>(Activation::kSilu), s2);
  ASSERT_TRUE(silu.defined()) << what;
  EXPECT_LE(rel(silu, g * at::sigmoid(g) * u), 1.5e-2) << "gated, " << what;
}

TEST(FusedKernels, CpuTensorsTakeTheAtenPath) {
  EXPECT_FALSE(fused_linear(at::ones({1, 8}, at::kBFloat16), at::ones({4, 8}, at::kBFloat16), {}).defined());
  EXPECT_FALSE(fused_rms_norm(at::ones({2, 8}), at::ones({8}), 1e-6).defined());
  EXPECT_FALSE(fused_rope(at::ones({2, 3, 8}), at::ones({2, 8}), at::ones({2, 8})).defined());
}

TEST(FusedKernels, LinearForDecodeShapes) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(2);
  for (at::ScalarType t : {at::kBFloat16, at::kHalf}) {
    for (int64_t out : {37, 512}) {
      const at::Tensor w = (at::randn({out, 2560}) * 0.02).to(t), b = at::randn({out}).to(t);
      for (int64_t tokens = 1; tokens <= 8; ++tokens) {  // from 5: the tensor-core kernel
        const at::Tensor x = at::randn({tokens, 2560}).to(t);
        for (bool bias : {false, true}) {
          const at::Tensor want = at::linear(x.to(at::kDouble), w.to(at::kDouble),
                                             bias ? b.to(at::kDouble) : at::Tensor());  // exact products of the inputs
          const at::Tensor got = fused_linear(x.cuda(), w.cuda(), bias ? b.cuda() : at::Tensor());
          ASSERT_TRUE(got.defined());
          ASSERT_EQ(got.scalar_type(), t);
          const double err = (got.cpu().to(at::kDouble) - want).norm().item<double>() / want.norm().item<double>();
          EXPECT_LE(err, t == at::kBFloat16 ? 4e-3 : 1e-3) << t << " out " << out << " tokens " << tokens;
        }
      }
    }
  }
  const at::Tensor w = at::ones({16, 64}, at::kCUDA).to(at::kBFloat16);
  EXPECT_FALSE(fused_linear(at::ones({9, 64}, at::kCUDA).to(at::kBFloat16), w, {}).defined());  // > 8 tokens: cuBLAS
  const at::Tensor w40 = at::ones({16, 40}, at::kCUDA).to(at::kBFloat16);
  EXPECT_TRUE(fused_linear(at::ones({6, 40}, at::kCUDA).to(at::kBFloat16), w40, {}).defined());  // in % 32: the GEMV
  EXPECT_FALSE(fused_linear(at::ones({1, 64}, at::kCUDA), at::ones({16, 64}, at::kCUDA), {}).defined());  // float32
  EXPECT_FALSE(
      fused_linear(at::ones({1, 60}, at::kCUDA).to(at::kBFloat16), at::ones({16, 60}, at::kCUDA).to(at::kBFloat16), {})
          .defined());  // in % 8 != 0
}

// The residual and gated epilogues, on row counts that pick each threads-per-row
// variant (128, 64 and 32 threads a row) and token counts of both kernels (1 and 3: the
// GEMV; 5 and 8: the tensor cores), against float64 references.
TEST(FusedKernels, GemvEpiloguesForDecodeShapes) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(5);
  const at::ScalarType t = at::kBFloat16;
  for (int64_t out : {37, 2560, 5000, 9000}) {
    const at::Tensor w = (at::randn({out, 1024}) * 0.03).to(t), b = at::randn({out}).to(t);
    const at::Tensor w2 = (at::randn({2 * out, 1024}) * 0.03).to(t);
    for (int64_t tokens : {1, 3, 5, 8}) {
      const at::Tensor x = at::randn({tokens, 1024}).to(t), r = at::randn({tokens, out}).to(t);
      const at::Tensor xd = x.to(at::kDouble);
      const at::Tensor sum = fused_linear_add(x.cuda(), w.cuda(), b.cuda(), r.cuda());
      ASSERT_TRUE(sum.defined());
      EXPECT_LE(rel(sum, r.to(at::kDouble) + at::linear(xd, w.to(at::kDouble), b.to(at::kDouble))), 8e-3)
          << "residual, out " << out << " tokens " << tokens;
      const at::Tensor gu = at::linear(xd, w2.to(at::kDouble));
      const at::Tensor g = gu.narrow(1, 0, out), u = gu.narrow(1, out, out);
      const at::Tensor silu = fused_gated_linear(x.cuda(), w2.cuda(), static_cast<int>(Activation::kSilu));
      ASSERT_TRUE(silu.defined());
      EXPECT_LE(rel(silu, g * at::sigmoid(g) * u), 1.5e-2) << "silu, out " << out << " tokens " << tokens;
      const at::Tensor gelu = fused_gated_linear(x.cuda(), w2.cuda(), static_cast<int>(Activation::kGeluTanh));
      EXPECT_LE(rel(gelu, activate(g, Activation::kGeluTanh) * u), 1.5e-2) << "gelu, out " << out;
    }
  }
  EXPECT_FALSE(fused_gated_linear(at::ones({1, 64}, at::kCUDA), at::ones({16, 64}, at::kCUDA), 0).defined());  // f32
}

// One and two tokens on rows of 1,024 to 32,768 weights: from one 16-byte load a
// thread of the GEMV (int8 rows of 2,048 over 128 threads) to sixteen, in kUnroll
// rounds, in every epilogue against float64; float32 x too for int8 rows (plain only;
// int8 rows at two bf16 tokens take the tensor cores). One token takes a grid of one
// wave where it fits (gemv.cuh, launch_one_wave): 300 rows at 128 threads a row, with 4,
// 6 or 8 loads a thread (rows of 1,024-4,096, 6,144 and 8,192 16-bit weights), and 2,560
// rows (more blocks than fit at 128) at 64 or 32.
TEST(FusedKernels, OneAndTwoTokensOnRowsOfEveryLength) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(6);
  auto exact = [](const Int8Rows& r) { return r.q.to(at::kDouble) * r.scale.to(at::kDouble).unsqueeze(1); };
  for (int64_t out : {300, 2560})
    for (bool int8 : {false, true}) {
      for (int64_t in : {1024, 2560, 4096, 6144, 8192, 16384}) {
        const int64_t k = int8 ? 2 * in : in;
        const at::Tensor wf = at::randn({out, k}) * 0.02, w2f = at::randn({2 * out, k}) * 0.02;
        const Int8Rows q = quantize_rows(wf), q2 = quantize_rows(w2f);
        const at::Tensor w = int8 ? q.q.cuda() : wf.to(at::kBFloat16).cuda(), sc = int8 ? q.scale.cuda() : at::Tensor();
        const at::Tensor w2 = int8 ? q2.q.cuda() : w2f.to(at::kBFloat16).cuda(),
                         s2 = int8 ? q2.scale.cuda() : at::Tensor();
        const at::Tensor wd = int8 ? exact(q) : wf.to(at::kBFloat16).to(at::kDouble);
        const at::Tensor w2d = int8 ? exact(q2) : w2f.to(at::kBFloat16).to(at::kDouble);
        for (int64_t tokens : {1, 2}) {
          const std::string what = std::to_string(out) + (int8 ? " int8" : " bf16") + " rows of " + std::to_string(k) +
                                   ", tokens " + std::to_string(tokens);
          const at::Tensor x = at::randn({tokens, k}).to(at::kBFloat16), b = at::randn({out}).to(at::kBFloat16);
          const at::Tensor r = at::randn({tokens, out}).to(at::kBFloat16);
          const at::Tensor xd = x.to(at::kDouble), want = at::linear(xd, wd, b.to(at::kDouble));
          const at::Tensor got = fused_linear(x.cuda(), w, b.cuda(), sc);
          ASSERT_TRUE(got.defined()) << what;
          EXPECT_LE(rel(got, want), 4e-3) << "plain, " << what;
          expect_residual_and_gated(x, b, r, w, sc, w2, s2, want, w2d, what);
          if (int8) {
            const at::Tensor xf = at::randn({tokens, k});
            const at::Tensor gotf = fused_linear(xf.cuda(), w, {}, sc);
            ASSERT_TRUE(gotf.defined()) << what;
            EXPECT_LE(rel(gotf, at::linear(xf.to(at::kDouble), wd)), 1e-5) << "float32 x, " << what;
          }
        }
      }
    }
}

// Weight-only int8 rows through the same kernels: every epilogue, token counts of one
// and of several GEMV launches (up to 8 tokens each; float32 x up to 32) and of the
// tensor-core kernel (9-64, 16-bit x), against float64 products of the int8 values and
// their scales.
TEST(FusedKernels, Int8RowsInEveryEpilogue) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(9);
  auto exact = [](const Int8Rows& r) { return r.q.to(at::kDouble) * r.scale.to(at::kDouble).unsqueeze(1); };
  for (int64_t out : {37, 2560, 9000}) {
    const Int8Rows q = quantize_rows(at::randn({out, 1024}) * 0.03), q2 = quantize_rows(at::randn({2 * out, 1024}));
    const at::Tensor qc = q.q.cuda(), sc = q.scale.cuda(), q2c = q2.q.cuda(), s2c = q2.scale.cuda();
    const at::Tensor wd = exact(q), w2d = exact(q2);
    for (int64_t tokens : {1, 5, 8, 13, 32, 50}) {
      for (at::ScalarType t : {at::kBFloat16, at::kFloat}) {
        if (t == at::kFloat && tokens > 32) continue;
        const at::Tensor x = at::randn({tokens, 1024}).to(t), b = at::randn({out}).to(t);
        const at::Tensor xd = x.to(at::kDouble), want = at::linear(xd, wd, b.to(at::kDouble));
        const at::Tensor got = fused_linear(x.cuda(), qc, b.cuda(), sc);
        ASSERT_TRUE(got.defined()) << t << " out " << out << " tokens " << tokens;
        ASSERT_EQ(got.scalar_type(), t);
        EXPECT_LE(rel(got, want), t == at::kFloat ? 1e-5 : 4e-3) << t << " out " << out << " tokens " << tokens;
        const at::Tensor r = at::randn({tokens, out}).to(t);
        if (t == at::kFloat) {  // float32 inputs take the plain epilogue only
          EXPECT_FALSE(fused_linear_add(x.cuda(), qc, b.cuda(), r.cuda(), sc).defined());
          EXPECT_FALSE(fused_gated_linear(x.cuda(), q2c, 0, s2c).defined());
          continue;
        }
        expect_residual_and_gated(x, b, r, qc, sc, q2c, s2c, want, w2d,
                                  "out " + std::to_string(out) + " tokens " + std::to_string(tokens));
      }
    }
  }
  const at::Tensor q = at::zeros({16, 64}, at::kChar).cuda(), s = at::ones({16}, at::kCUDA);
  EXPECT_FALSE(fused_linear(at::ones({65, 64}, at::kCUDA).to(at::kBFloat16), q, {}, s).defined());  // > 64 tokens
  EXPECT_FALSE(fused_linear(at::ones({33, 64}, at::kCUDA), q, {}, s).defined());  // float32 x, > 32 tokens
  EXPECT_FALSE(fused_linear(at::ones({33, 48}, at::kCUDA).to(at::kBFloat16), at::zeros({16, 48}, at::kChar).cuda(), {},
                            s)
                   .defined());  // > 32 tokens, in % 64 != 0
  EXPECT_FALSE(
      fused_linear(at::ones({1, 40}, at::kCUDA).to(at::kBFloat16), at::zeros({16, 40}, at::kChar).cuda(), {}, s)
          .defined());  // in % 16 != 0
  EXPECT_FALSE(fused_linear(at::ones({1, 64}, at::kCUDA).to(at::kBFloat16), q, {}, s.narrow(0, 0, 8)).defined());
}

// Few rows and a long K: the tensor-core kernel splits each 16-row tile's K over several
// blocks (small_gemm.cuh), and the last block of a tile adds the splits' sums. Checked
// against float64 in every epilogue, 16-bit and int8 rows, and for repeatability: the
// same call three times gives the same bits (the splits are added in a fixed order, and
// a tile's ticket is back at 0 for the next launch).
TEST(FusedKernels, TheTensorCoreKernelSplitsKWhereRowsAreFew) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(11);
  const at::ScalarType t = at::kBFloat16;
  for (bool int8 : {false, true}) {
    for (int64_t out : {37, 2560}) {
      const int64_t in = 6912;  // down_proj's: 216 chunks of 16-bit rows, 108 of int8 rows
      const at::Tensor wf = at::randn({out, in}) * 0.02, w2f = at::randn({2 * out, in}) * 0.02;
      const Int8Rows q = quantize_rows(wf), q2 = quantize_rows(w2f);
      const at::Tensor w = int8 ? q.q.cuda() : wf.to(t).cuda(), w2 = int8 ? q2.q.cuda() : w2f.to(t).cuda();
      const at::Tensor sc = int8 ? q.scale.cuda() : at::Tensor(), s2c = int8 ? q2.scale.cuda() : at::Tensor();
      const at::Tensor wd =
          int8 ? q.q.to(at::kDouble) * q.scale.to(at::kDouble).unsqueeze(1) : wf.to(t).to(at::kDouble);
      const at::Tensor w2d =
          int8 ? q2.q.to(at::kDouble) * q2.scale.to(at::kDouble).unsqueeze(1) : w2f.to(t).to(at::kDouble);
      for (int64_t tokens : {2, 5, 8, 16}) {  // 16: int8 rows only, unsplit (16-bit rows: cuBLAS)
        if (!int8 && tokens > 8) continue;
        const std::string what =
            std::string(int8 ? "int8" : "bf16") + ", out " + std::to_string(out) + ", " + std::to_string(tokens);
        const at::Tensor x = at::randn({tokens, in}).to(t), b = at::randn({out}).to(t),
                         r = at::randn({tokens, out}).to(t);
        const at::Tensor xd = x.to(at::kDouble), want = at::linear(xd, wd, b.to(at::kDouble));
        const at::Tensor got = fused_linear(x.cuda(), w, b.cuda(), sc);
        ASSERT_TRUE(got.defined()) << what;
        EXPECT_LE(rel(got, want), 4e-3) << what;
        for (int again = 0; again < 2; ++again)
          EXPECT_TRUE(at::equal(fused_linear(x.cuda(), w, b.cuda(), sc), got)) << "again, " << what;
        expect_residual_and_gated(x, b, r, w, sc, w2, s2c, want, w2d, what);
      }
    }
  }
}

TEST(FusedKernels, RmsNormMatchesTheAtenOps) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(0);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t hidden : {64, 2560, 4100, 8192, 20000}) {
      const at::Tensor x = (at::randn({5, hidden}) * 3).to(t), w = (at::rand({hidden}) + 0.5).to(t);
      const at::Tensor want = rms_norm(x.to(at::kFloat), w.to(at::kFloat), 1e-5).to(t);  // float32 reference
      const at::Tensor got = fused_rms_norm(x.cuda(), w.cuda(), 1e-5).cpu();
      ASSERT_EQ(got.scalar_type(), t);
      // float32: the sum's order only; 16-bit: at most one rounding step of the output.
      const double tol = t == at::kFloat ? 1e-5 : (t == at::kBFloat16 ? 1.0 / 64 : 1.0 / 512);
      const double worst =
          ((got.to(at::kFloat) - want.to(at::kFloat)).abs() / want.to(at::kFloat).abs().clamp_min(1e-3))
              .max()
              .item<double>();
      EXPECT_LE(worst, tol) << t << " hidden " << hidden;
    }
  }
}

// Beyond the fused GEMVs' tokens the gated MLP's activation and product are one kernel
// after cuBLAS's projection: round(act(gate)) * up with the activation in float32 (as
// the GEMV's epilogue, and as ATen's fused activations compute it). The reference takes
// the activation in float64; ATen's written-out tanh GELU rounds every step in bf16 and
// is not the reference.
TEST(FusedKernels, GatedActivationMatchesAFloat64Reference) {
  EXPECT_FALSE(fused_gated_act(at::ones({2, 8}), 0).defined());  // a CPU tensor
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(2);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    for (Activation a : {Activation::kSilu, Activation::kRelu, Activation::kGelu, Activation::kGeluTanh}) {
      const at::Tensor gu = (at::randn({13, 2 * 200}) * 3).to(t);
      const at::Tensor got = fused_gated_act(gu.cuda(), static_cast<int>(a));
      ASSERT_TRUE(got.defined());
      const at::Tensor g = gu.narrow(1, 0, 200).to(at::kDouble), u = gu.narrow(1, 200, 200).to(at::kDouble);
      const at::Tensor want = (activate(g, a).to(t).to(at::kDouble) * u).to(t);
      const double worst =
          ((got.cpu().to(at::kDouble) - want.to(at::kDouble)).abs() / want.to(at::kDouble).abs().clamp_min(1e-2))
              .max()
              .item<double>();
      EXPECT_LE(worst, t == at::kFloat ? 1e-4 : 1.6e-2) << t << " activation " << static_cast<int>(a);
    }
  }
}

TEST(FusedKernels, RopeIsBitForBitTheAtenOps) {
  if (!kernels()) GTEST_SKIP() << "no GPU or no CUDA kernels in this build";
  at::manual_seed(1);
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    for (int64_t dim : {16, 128}) {
      const at::Tensor x = at::randn({7, 3, dim}).to(t), cos = at::rand({7, dim}).to(t), sin = at::rand({7, dim}).to(t);
      const at::Tensor want = apply_rope(x, cos, sin);  // the ATen path, on the CPU
      const at::Tensor got = fused_rope(x.cuda(), cos.cuda(), sin.cuda()).cpu();
      EXPECT_TRUE(at::equal(got, want)) << t << " dim " << dim << ": max |d| "
                                        << (got.to(at::kFloat) - want.to(at::kFloat)).abs().max().item<double>();
      // Rows read in place from a wider tensor (q or k of a fused q/k/v output).
      const at::Tensor wide = at::randn({7, 5 * dim}).to(t).cuda();
      const at::Tensor strided = wide.narrow(1, dim, 3 * dim).view({7, 3, dim});
      EXPECT_TRUE(at::equal(fused_rope(strided, cos.cuda(), sin.cuda()).cpu(),
                            apply_rope(strided.cpu().contiguous(), cos, sin)))
          << t << " dim " << dim << ", strided rows";
    }
  }
}

}  // namespace
}  // namespace cascade::stage
