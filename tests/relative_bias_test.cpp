#include "stage/layers/relative_bias.h"

#include "tests/layer_test_util.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

// The buckets transformers computed for each T5 fixture's config (reference.json's
// relative_buckets, relative positions -64..64), bidirectional and causal.
TEST(RelativeBias, BucketsAreTransformersOwn) {
  ASSERT_GE(test::seq2seq_fixtures().size(), 2u);
  for (const auto& name : test::seq2seq_fixtures()) {
    const nlohmann::json config = test::read_json(test::fixture(name) + "/config.json");
    const nlohmann::json ref = test::read_json(test::fixture(name) + "/reference.json");
    const nlohmann::json& want = ref["relative_buckets"];
    const auto rel = want["relative_positions"].get<std::vector<int64_t>>();
    const at::Tensor rel_t = at::tensor(rel, at::kLong);
    for (const char* dir : {"bidirectional", "causal"}) {
      const at::Tensor got = relative_position_bucket(rel_t, std::string(dir) == "bidirectional",
                                                      config["relative_attention_num_buckets"].get<int64_t>(),
                                                      config["relative_attention_max_distance"].get<int64_t>());
      const std::vector<int64_t> got_v(got.data_ptr<int64_t>(), got.data_ptr<int64_t>() + got.numel());
      EXPECT_EQ(got_v, want[dir].get<std::vector<int64_t>>()) << name << " " << dir;
    }
  }
}

TEST(RelativeBias, EachHeadLooksUpItsBucket) {
  at::manual_seed(0);
  const RelativeBiasSpec spec{3, 8, 20, false};
  test::Weights w;
  w.add("rb.weight", {8, 3});
  const RelativeBias rb = RelativeBias::load(spec, w.source(), "rb");
  const at::Tensor q = at::tensor(std::vector<int64_t>{4, 9}, at::kLong);  // decoding queries at 4 and 9
  const at::Tensor k = at::arange(10, at::kLong);
  const at::Tensor bias = rb(q, k);
  ASSERT_EQ(bias.sizes(), (at::IntArrayRef{3, 2, 10}));
  const at::Tensor buckets = relative_position_bucket(k.unsqueeze(0) - q.unsqueeze(1), false, 8, 20);
  for (int64_t h = 0; h < 3; ++h)
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 10; ++j)
        EXPECT_EQ(bias[h][i][j].item<float>(), w.t["rb.weight"][buckets[i][j].item<int64_t>()][h].item<float>());
  // Causal: every key after the query shares bucket 0 with the query itself.
  EXPECT_TRUE(at::equal(bias.select(1, 0).slice(1, 4), bias.select(1, 0).select(1, 4).unsqueeze(1).expand({3, 6})));
}

}  // namespace
}  // namespace cascade::stage
