#include "stage/layers/mlp.h"

#include "tests/layer_test_util.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

constexpr int64_t H = 16, I = 24;

TEST(Mlp, GatedAndPlainAsWrittenOut) {
  at::manual_seed(0);
  test::Weights w;
  w.add("m.gate_proj.weight", {I, H});
  w.add("m.up_proj.weight", {I, H});
  w.add("m.down_proj.weight", {H, I});
  const at::Tensor x = at::randn({3, H});
  Mlp gated({MlpKind::kGated, H, I, Activation::kSilu, false}, w.source(), "m.");
  const at::Tensor want =
      at::linear(at::silu(at::linear(x, w.t["m.gate_proj.weight"])) * at::linear(x, w.t["m.up_proj.weight"]),
                 w.t["m.down_proj.weight"]);
  // 1e-5: the CPU kernels sum in another order than at::linear (float32 rounding only).
  EXPECT_LT(test::max_abs_diff(gated(x), want), 1e-5);
  EXPECT_TRUE(gated.capturable());

  w.add("m.c_fc.weight", {H, I});  // GPT-2's Conv1D: [in, out]
  w.add("m.c_fc.bias", {I});
  w.add("m.c_proj.weight", {I, H});
  w.add("m.c_proj.bias", {H});
  MlpNames conv;
  conv.conv1d = true;
  Mlp plain({MlpKind::kPlain, H, I, Activation::kGeluTanh, true}, w.source(), "m.", conv);
  const at::Tensor h = activate(x.matmul(w.t["m.c_fc.weight"]) + w.t["m.c_fc.bias"], Activation::kGeluTanh);
  EXPECT_LT(test::max_abs_diff(plain(x), h.matmul(w.t["m.c_proj.weight"]) + w.t["m.c_proj.bias"]), 1e-6);
}

// Phi-3's fused gate_up_proj (gate rows, then up rows) gives what separate gate and up
// projections give.
TEST(Mlp, FusedGateUpMatchesSeparateProjections) {
  at::manual_seed(4);
  test::Weights w;
  w.add("m.gate_proj.weight", {I, H});
  w.add("m.up_proj.weight", {I, H});
  w.add("m.down_proj.weight", {H, I});
  w.t["m.gate_up_proj.weight"] = at::cat({w.t["m.gate_proj.weight"], w.t["m.up_proj.weight"]}, 0);
  MlpNames fused;
  fused.gate_up = "gate_up_proj";
  const MlpSpec spec{MlpKind::kGated, H, I, Activation::kSilu, false};
  Mlp one(spec, w.source(), "m.", fused), two(spec, w.source(), "m.");
  const at::Tensor x = at::randn({3, H});
  EXPECT_LT(test::max_abs_diff(one(x), two(x)), 1e-5);
  ModuleSpec s;
  Mlp::declare(&s, spec, "m.", fused);
  EXPECT_EQ(s.tensors, (std::vector<std::string>{"m.gate_up_proj.weight", "m.down_proj.weight"}));
  EXPECT_DOUBLE_EQ(s.cost.flops_per_token, 2.0 * 3 * H * I);
}

// Mixtral's block against a token-by-token loop over the chosen experts.
TEST(Mlp, MixtureOfExpertsMatchesAPerTokenLoop) {
  at::manual_seed(1);
  const int64_t E = 4, k = 2;
  test::Weights w;
  w.add("moe.gate.weight", {E, H}, 1.0);
  for (int64_t e = 0; e < E; ++e) {
    const std::string p = "moe.experts." + std::to_string(e) + ".";
    w.add(p + "gate_proj.weight", {I, H});
    w.add(p + "up_proj.weight", {I, H});
    w.add(p + "down_proj.weight", {H, I});
  }
  const at::Tensor x = at::randn({9, H});
  for (bool normalize : {true, false}) {
    MlpSpec m{MlpKind::kMoe, H, I, Activation::kSilu, false, E, k, normalize};
    Mlp moe(m, w.source(), "moe.");
    EXPECT_FALSE(moe.capturable());  // routing is read on the host
    const at::Tensor got = moe(x);
    for (int64_t t = 0; t < x.size(0); ++t) {
      const at::Tensor xt = x.narrow(0, t, 1);
      const at::Tensor p = at::softmax(at::linear(xt, w.t["moe.gate.weight"]), -1)[0];
      auto [top, idx] = p.topk(k);
      if (normalize) top = top / top.sum();
      at::Tensor want = at::zeros({1, H});
      for (int64_t j = 0; j < k; ++j) {
        const std::string e = "moe.experts." + std::to_string(idx[j].item<int64_t>()) + ".";
        const at::Tensor y = at::linear(
            at::silu(at::linear(xt, w.t[e + "gate_proj.weight"])) * at::linear(xt, w.t[e + "up_proj.weight"]),
            w.t[e + "down_proj.weight"]);
        want += top[j] * y;
      }
      EXPECT_LT(test::max_abs_diff(got.narrow(0, t, 1), want), 1e-5) << "token " << t << " normalize " << normalize;
    }
  }
}

TEST(Mlp, DeclaresAllExpertsBytesButOnlyActiveFlops) {
  ModuleSpec dense, moe;
  Mlp::declare(&dense, {MlpKind::kGated, H, I, Activation::kSilu, false}, "l.mlp.");
  EXPECT_DOUBLE_EQ(dense.cost.flops_per_token, 2.0 * 3 * H * I);
  EXPECT_EQ(dense.tensors.size(), 3u);
  Mlp::declare(&moe, {MlpKind::kMoe, H, I, Activation::kSilu, false, 8, 2, true}, "l.moe.");
  EXPECT_EQ(moe.tensors.size(), 1u + 8 * 3);  // router + every expert's three projections
  EXPECT_DOUBLE_EQ(moe.cost.flops_per_token, 2.0 * 8 * H + 2.0 * 3 * H * I * 2);  // router + top-2 experts
  EXPECT_EQ(moe.cost.act_elems_per_token, 3 * I * 2 + 8);                         // top-2 experts' + scores
  EXPECT_EQ(moe.int8_layout("l.moe.gate.weight"), Int8Layout::kNone);             // the router stays in float
  EXPECT_EQ(moe.int8_layout("l.moe.experts.7.down_proj.weight"), Int8Layout::kRows);
}

}  // namespace
}  // namespace cascade::stage
