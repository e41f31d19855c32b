#include "stage/layers/attention.h"

#include <cmath>

#include "stage/kv_cache.h"
#include "tests/layer_test_util.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

constexpr int64_t kHidden = 32;

AttentionSpec spec(int64_t heads, int64_t kv_heads, PositionKind pos) {
  AttentionSpec a;
  a.hidden = kHidden;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.head_dim = kHidden / heads;
  a.position = pos;
  a.max_position = 64;
  return a;
}

void add_weights(test::Weights* w, const AttentionSpec& a) {
  const int64_t q = a.heads * a.head_dim, kv = a.kv_heads * a.head_dim;
  w->add("attn.q_proj.weight", {q, kHidden});
  w->add("attn.k_proj.weight", {kv, kHidden});
  w->add("attn.v_proj.weight", {kv, kHidden});
  w->add("attn.o_proj.weight", {kHidden, q});
  w->add("attn.q_norm.weight", {a.head_dim});
  w->add("attn.k_norm.weight", {a.head_dim});
}

// One sequence's prefill of `x` [T, hidden] through the layer.
at::Tensor prefill(Attention& attn, const AttentionSpec& a, const at::Tensor& x) {
  KvCache kv({0}, 1, a.kv_heads, 64, a.head_dim, at::kFloat, at::kCPU);
  const Batch b{{{0, 0, x.size(0)}}};
  StepContext ctx{b, b.positions(at::kCPU), &kv, {}, {}, {}};
  return attn(x, ctx);
}

TEST(Attention, AlibiSlopesFollowBloomForAnyHeadCount) {
  const at::Tensor s8 = Attention::alibi_slopes(8);
  for (int64_t h = 0; h < 8; ++h) EXPECT_FLOAT_EQ(s8[h].item<float>(), std::pow(2.0f, -float(h + 1)));
  // 6 heads: the 4-head sequence (base 1/4), then every other term of the 8-head one.
  const std::vector<float> want6 = {0.25f, 0.0625f, 0.015625f, 0.00390625f, 0.5f, 0.125f};
  const at::Tensor s6 = Attention::alibi_slopes(6);
  ASSERT_EQ(s6.numel(), 6);
  for (int64_t h = 0; h < 6; ++h) EXPECT_FLOAT_EQ(s6[h].item<float>(), want6[size_t(h)]) << h;
}

// ALiBi and soft-capping against attention written out head by head.
TEST(Attention, AlibiAndSoftcapMatchADirectComputation) {
  at::manual_seed(0);
  AttentionSpec a = spec(4, 4, PositionKind::kAlibi);
  a.softcap = 2.0;
  test::Weights w;
  add_weights(&w, a);
  Attention attn(a, 0, w.source(), "attn.");
  const int64_t T = 7, d = a.head_dim;
  const at::Tensor x = at::randn({T, kHidden});
  const at::Tensor got = prefill(attn, a, x);

  const at::Tensor q = at::linear(x, w.t["attn.q_proj.weight"]).view({T, 4, d});
  const at::Tensor k = at::linear(x, w.t["attn.k_proj.weight"]).view({T, 4, d});
  const at::Tensor v = at::linear(x, w.t["attn.v_proj.weight"]).view({T, 4, d});
  const at::Tensor slopes = Attention::alibi_slopes(4);
  at::Tensor o = at::zeros({T, 4, d});
  for (int64_t h = 0; h < 4; ++h) {
    at::Tensor s = at::matmul(q.select(1, h), k.select(1, h).t()) / std::sqrt(double(d));  // [T, T]
    s = at::tanh(s / 2.0) * 2.0 + slopes[h] * at::arange(T, at::kFloat).unsqueeze(0);
    s = s.masked_fill(at::ones({T, T}, at::kBool).triu(1), -INFINITY);
    o.select(1, h).copy_(at::matmul(at::softmax(s, -1), v.select(1, h)));
  }
  const at::Tensor want = at::linear(o.view({T, kHidden}), w.t["attn.o_proj.weight"]);
  EXPECT_LT(test::max_abs_diff(got, want), 1e-5);
}

// The decode path (one token per step, the batched attend_decode) gives what the
// prefill gave, with RoPE, GQA, q/k norms and a sliding window all on.
TEST(Attention, DecodeStepsMatchThePrefill) {
  at::manual_seed(1);
  AttentionSpec a = spec(4, 2, PositionKind::kRope);
  a.window = 3;
  a.qk_norm = NormKind::kRms;
  test::Weights w;
  add_weights(&w, a);
  Attention attn(a, 0, w.source(), "attn.");
  const int64_t T = 6;
  const at::Tensor x = at::randn({T, kHidden});
  const at::Tensor whole = prefill(attn, a, x);

  KvCache kv({0}, 1, a.kv_heads, 64, a.head_dim, at::kFloat, at::kCPU);
  for (int64_t t = 0; t < T; ++t) {
    const Batch b{{{0, t, 1}}};
    StepContext ctx{b, b.positions(at::kCPU), &kv, {}, {}, kv.decode_index(b, at::kCPU)};
    ASSERT_TRUE(ctx.decode.defined());
    EXPECT_LT(test::max_abs_diff(attn(x.narrow(0, t, 1), ctx), whole.narrow(0, t, 1)), 1e-5) << "token " << t;
  }
}

// Fused projections give what separate ones give: Phi-3's qkv_proj (q rows, k rows, v
// rows) and Bloom's query_key_value (rows head by head: [heads, 3, head_dim]), with
// partial rotary embeddings (12 of 16 dims) on the Phi-3 side.
TEST(Attention, FusedQkvLayoutsMatchSeparateProjections) {
  at::manual_seed(2);
  for (const bool per_head : {false, true}) {
    AttentionSpec a = spec(2, 2, per_head ? PositionKind::kAlibi : PositionKind::kRope);
    a.rope.partial_rotary_factor = 0.75;
    a.qkv_bias = per_head;
    test::Weights w;
    add_weights(&w, a);
    const int64_t d = a.head_dim, n = a.heads * d;
    if (a.qkv_bias)
      for (const char* p : {"q", "k", "v"}) w.add(std::string("attn.") + p + "_proj.bias", {n});
    const at::Tensor q = w.t["attn.q_proj.weight"], k = w.t["attn.k_proj.weight"], v = w.t["attn.v_proj.weight"];
    AttentionNames fused;
    fused.qkv = "qkv";
    fused.qkv_per_head = per_head;
    if (per_head) {  // [heads, 3, head_dim] rows
      const at::Tensor rows = at::stack({q.view({2, d, kHidden}), k.view({2, d, kHidden}), v.view({2, d, kHidden})}, 1);
      w.t["attn.qkv.weight"] = rows.reshape({3 * n, kHidden});
      const auto bias = [&](const char* p) { return w.t[std::string("attn.") + p + "_proj.bias"].view({2, d}); };
      w.t["attn.qkv.bias"] = at::stack({bias("q"), bias("k"), bias("v")}, 1).reshape({3 * n});
    } else {
      w.t["attn.qkv.weight"] = at::cat({q, k, v}, 0);
    }
    Attention separate(a, 0, w.source(), "attn."), one(a, 0, w.source(), "attn.", fused);
    const at::Tensor x = at::randn({5, kHidden});
    EXPECT_LT(test::max_abs_diff(prefill(one, a, x), prefill(separate, a, x)), 1e-5) << "per_head " << per_head;
  }
}

// Partial rotary embeddings leave the dims past rotary_dim as they are.
TEST(Attention, PartialRotaryKeepsTheTailOfEachHead) {
  at::manual_seed(3);
  RopeConfig c;
  c.partial_rotary_factor = 0.5;
  Rope r(c, 8, 64);
  const Batch b{{{0, 3, 2}}};
  auto [cos, sin] = r.cos_sin(b, b.positions(at::kCPU));
  ASSERT_EQ(cos.size(1), 4);
  const at::Tensor x = at::randn({2, 3, 8});
  const at::Tensor y = apply_rope(x, cos, sin);
  EXPECT_TRUE(y.narrow(2, 4, 4).equal(x.narrow(2, 4, 4)));
  EXPECT_TRUE(y.narrow(2, 0, 4).allclose(apply_rope(x.narrow(2, 0, 4).contiguous(), cos, sin)));
  EXPECT_FALSE(y.narrow(2, 0, 4).allclose(x.narrow(2, 0, 4)));
}

TEST(Attention, DeclaresTensorsCostsAndWhatInt8MayQuantize) {
  AttentionSpec a = spec(4, 2, PositionKind::kRope);
  a.qkv_bias = true;
  ModuleSpec s;
  Attention::declare(&s, a, "l.attn.");
  EXPECT_EQ(s.tensors, (std::vector<std::string>{"l.attn.q_proj.weight", "l.attn.q_proj.bias", "l.attn.k_proj.weight",
                                                 "l.attn.k_proj.bias", "l.attn.v_proj.weight", "l.attn.v_proj.bias",
                                                 "l.attn.o_proj.weight"}));
  const double q = 32 * 32, kv = 16 * 32;
  EXPECT_DOUBLE_EQ(s.cost.flops_per_token, 2 * (q + 2 * kv + q));
  EXPECT_EQ(s.cost.kv_elems_per_token, 2 * 16);
  EXPECT_EQ(s.cost.score_heads, 4);
  EXPECT_EQ(s.int8_layout("l.attn.k_proj.weight"), Int8Layout::kRows);
  EXPECT_EQ(s.int8_layout("l.attn.k_proj.bias"), Int8Layout::kNone);

  AttentionNames fused;
  fused.qkv = "c_attn";
  fused.o = "c_proj";
  fused.conv1d = true;
  ModuleSpec g;
  Attention::declare(&g, spec(4, 4, PositionKind::kNone), "h.0.attn.", fused);
  EXPECT_EQ(g.tensors, (std::vector<std::string>{"h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight"}));
  EXPECT_EQ(g.int8_layout("h.0.attn.c_attn.weight"), Int8Layout::kTransposed);
}

}  // namespace
}  // namespace cascade::stage
