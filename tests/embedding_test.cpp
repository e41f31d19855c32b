#include "stage/layers/embedding.h"

#include "tests/layer_test_util.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

TEST(Embedding, TokensScaledAndPositionsAdded) {
  at::manual_seed(0);
  const at::Tensor tok = at::randn({10, 4}), pos = at::randn({6, 4});
  const at::Tensor ids = at::tensor({3, 1, 7}, at::kLong);
  const Batch b{{{0, 2, 3}}};
  StepContext ctx{b, b.positions(at::kCPU), nullptr, {}, {}, {}};
  EXPECT_TRUE(Embedding(tok).forward(ids, ctx).equal(tok.index_select(0, ids)));
  EXPECT_LT(test::max_abs_diff(Embedding(tok, {}, 2.0).forward(ids, ctx), tok.index_select(0, ids) * 2), 1e-7);
  const at::Tensor with_pos = Embedding(tok, pos).forward(ids, ctx);
  EXPECT_LT(test::max_abs_diff(with_pos, tok.index_select(0, ids) + pos.narrow(0, 2, 3)), 1e-7);
  const Batch past{{{0, 5, 3}}};  // positions 5..7 of 6 learned ones
  StepContext far{past, past.positions(at::kCPU), nullptr, {}, {}, {}};
  EXPECT_THROW_WITH(Embedding(tok, pos).forward(ids, far), c10::Error, "past the 6 learned positions");
}

// Bloom's word_embeddings_layernorm: the embedding, then a LayerNorm with bias.
TEST(Embedding, NormedAfterTheLookup) {
  at::manual_seed(1);
  const at::Tensor tok = at::randn({10, 4}), w = at::randn({4}), bias = at::randn({4});
  const at::Tensor ids = at::tensor({3, 1}, at::kLong);
  const Batch b{{{0, 0, 2}}};
  StepContext ctx{b, b.positions(at::kCPU), nullptr, {}, {}, {}};
  const Norm ln{NormKind::kLayer, w, bias, 1e-5};
  const at::Tensor want = at::layer_norm(tok.index_select(0, ids), {4}, w, bias, 1e-5);
  EXPECT_LT(test::max_abs_diff(Embedding(tok, {}, 1.0, ln).forward(ids, ctx), want), 1e-6);
}

TEST(LmHead, LastTokenOfEachSequenceAndSoftcap) {
  at::manual_seed(1);
  const at::Tensor w = at::randn({12, 4}) * 3, x = at::randn({5, 4});
  const Batch b{{{0, 0, 3}, {1, 0, 2}}};  // rows 2 and 4 are the last tokens
  StepContext ctx{b, b.positions(at::kCPU), nullptr, {}, {}, {}};
  const at::Tensor want = at::linear(x.index_select(0, at::tensor({2, 4}, at::kLong)), w);
  EXPECT_LT(test::max_abs_diff(LmHead(w).forward(x, ctx), want), 1e-6);
  const at::Tensor capped = LmHead(w, 5.0).forward(x, ctx);
  EXPECT_LT(test::max_abs_diff(capped, at::tanh(want / 5.0) * 5.0), 1e-6);
  EXPECT_LE(capped.abs().max().item<float>(), 5.0f);
}

}  // namespace
}  // namespace cascade::stage
