#include "stage/layers/block.h"

#include "stage/kv_cache.h"
#include "tests/layer_test_util.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

// A block is its parts composed with residuals; the optional post-branch norms (Gemma
// 2's) apply to each branch before it is added.
TEST(DecoderBlock, ResidualsAroundAttentionAndMlp) {
  at::manual_seed(0);
  const int64_t H = 16, I = 20;
  test::Weights w;
  for (const char* n : {"in", "pre", "post_a", "post_m"}) w.add(std::string(n) + ".weight", {H});
  for (const char* n : {"q", "k", "v", "o"}) w.add(std::string("attn.") + n + "_proj.weight", {H, H});
  w.add("mlp.gate_proj.weight", {I, H});
  w.add("mlp.up_proj.weight", {I, H});
  w.add("mlp.down_proj.weight", {H, I});
  AttentionSpec a;
  a.hidden = H;
  a.heads = a.kv_heads = 2;
  a.head_dim = 8;
  a.position = PositionKind::kNone;
  const MlpSpec m{MlpKind::kGated, H, I, Activation::kSilu, false};
  auto norm = [&](const char* n) { return Norm::load(w.source(), n, H, NormKind::kRmsOnePlus, 1e-6); };
  const at::Tensor x = at::randn({4, H});
  const Batch b{{{0, 0, 4}}};

  for (bool sandwich : {false, true}) {
    DecoderBlock block({norm("in"), Attention(a, 0, w.source(), "attn."), norm("pre"), Mlp(m, w.source(), "mlp."),
                        sandwich ? std::optional<Norm>(norm("post_a")) : std::nullopt,
                        sandwich ? std::optional<Norm>(norm("post_m")) : std::nullopt});
    KvCache kv1({0}, 1, 2, 8, 8, at::kFloat, at::kCPU), kv2({0}, 1, 2, 8, 8, at::kFloat, at::kCPU);
    StepContext c1{b, b.positions(at::kCPU), &kv1, {}, {}, {}}, c2{b, b.positions(at::kCPU), &kv2, {}, {}, {}};
    const at::Tensor got = block.forward(x, c1);

    Attention attn(a, 0, w.source(), "attn.");
    Mlp mlp(m, w.source(), "mlp.");
    at::Tensor br = attn(norm("in")(x), c2);
    if (sandwich) br = norm("post_a")(br);
    const at::Tensor y = x + br;
    at::Tensor mb = mlp(norm("pre")(y));
    if (sandwich) mb = norm("post_m")(mb);
    EXPECT_LT(test::max_abs_diff(got, y + mb), 1e-6) << "sandwich " << sandwich;
  }
}

}  // namespace
}  // namespace cascade::stage
