// The t5 family's description of T5 checkpoints written by transformers 5.17
// (tests/data/t5_v1_1: gated-GELU, untied, 2 encoder / 3 decoder layers; t5_tied: the
// original ReLU T5 with a tied, rescaled head). Running them is not implemented yet.
#include <gtest/gtest.h>

#include <map>

#include "stage/family.h"
#include "stage/model.h"
#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

ModelDescription describe_fixture(const std::string& name) {
  return describe(*storage::Checkpoint::open(test::fixture(name)));
}

TEST(T5, ConfigAsTransformersWritesIt) {
  const ModelConfig v11 = describe_fixture("t5_v1_1").config;
  EXPECT_EQ(v11.model_type, "t5");
  EXPECT_EQ(v11.hidden_act, "gelu_new");  // "gated-gelu"
  EXPECT_FALSE(v11.tie_word_embeddings);
  EXPECT_EQ(v11.num_layers, 3);  // the decoder's
  EXPECT_EQ(v11.head_dim, 16);
  const ModelConfig tied = describe_fixture("t5_tied").config;
  EXPECT_EQ(tied.hidden_act, "relu");
  EXPECT_TRUE(tied.tie_word_embeddings);
  nlohmann::json bad = v11.json;
  bad["feed_forward_proj"] = "gated-gelu-new";
  EXPECT_THROW_WITH(find_family("t5").parse_config(bad), ModelConfigError, "feed_forward_proj 'gated-gelu-new'");
  bad["feed_forward_proj"] = "gated-tanh";
  EXPECT_THROW_WITH(find_family("t5").parse_config(bad), ModelConfigError, "activation 'tanh'");
}

TEST(T5, ModulesFollowHfDeviceMapNames) {
  const ModelDescription d = describe_fixture("t5_v1_1");
  std::vector<std::string> names;
  for (const auto& m : d.modules) names.push_back(m.name);
  EXPECT_EQ(names, (std::vector<std::string>{"shared", "encoder.block.0", "encoder.block.1", "encoder.final_layer_norm",
                                             "decoder.block.0", "decoder.block.1", "decoder.block.2",
                                             "decoder.final_layer_norm", "lm_head"}));
  EXPECT_EQ(d.modules[1].kind, ModuleKind::kEncoderLayer);
  EXPECT_EQ(d.modules[3].kind, ModuleKind::kEncoderNorm);
  EXPECT_EQ(d.modules[6].kind, ModuleKind::kDecoderLayer);
  EXPECT_EQ(d.modules[6].layer, 2);
  EXPECT_EQ(d.modules[8].tensors, (std::vector<std::string>{"lm_head.weight"}));
  EXPECT_EQ(describe_fixture("t5_tied").modules.back().tensors, (std::vector<std::string>{"shared.weight"}));
}

// Every stored tensor is read by a module, and every tensor a module names is stored;
// each stack's relative-bias table (block 0's) is read by all of its blocks, and the
// encoder/decoder copies of the shared embedding by none.
TEST(T5, ModulesCoverTheCheckpoint) {
  for (const char* name : {"t5_v1_1", "t5_tied"}) {
    auto ck = storage::Checkpoint::open(test::fixture(name));
    const ModelDescription d = describe(*ck);
    std::map<std::string, int> readers;
    for (const auto& m : d.modules)
      for (const auto& t : m.tensors) {
        EXPECT_TRUE(ck->has(t)) << name << ": " << t;
        readers[t]++;
      }
    for (const auto& t : ck->tensor_names()) {
      if (t == "encoder.embed_tokens.weight" || t == "decoder.embed_tokens.weight") continue;
      EXPECT_GE(readers[t], 1) << name << ": " << t;
    }
    const int64_t enc = d.config.json["num_layers"], dec = d.config.num_layers;
    EXPECT_EQ(readers["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], enc) << name;
    EXPECT_EQ(readers["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], dec) << name;
  }
}

// The encoder keeps no cache; a decoder block caches K and V for its own tokens and for
// the encoder's (cross-attention), each per token.
TEST(T5, DecoderLayersBudgetSelfAndCrossAttention) {
  const ModelDescription d = describe_fixture("t5_v1_1");
  const int64_t kv = d.config.num_heads * d.config.head_dim;
  int layers = 0;
  for (const auto& m : d.modules) {
    if (m.kind != ModuleKind::kEncoderLayer && m.kind != ModuleKind::kDecoderLayer) continue;
    const bool decoder = m.kind == ModuleKind::kDecoderLayer;
    EXPECT_EQ(m.cost.kv_elems_per_token, decoder ? 2 * 2 * kv : 0) << m.name;
    EXPECT_GT(m.cost.flops_per_token, 0) << m.name;
    ++layers;
  }
  EXPECT_EQ(layers, 5);
}

TEST(T5, LoadingSaysRunningIsNotImplemented) {
  EXPECT_THROW_WITH(Model::load(storage::Checkpoint::open(test::fixture("t5_v1_1")), LoadOptions{}), ModelConfigError,
                    "cannot run it yet", "module 'shared'");
}

}  // namespace
}  // namespace cascade::stage
