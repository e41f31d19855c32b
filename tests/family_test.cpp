#include "stage/family.h"

#include <gtest/gtest.h>

#include "stage/model.h"
#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

TEST(Family, RegistryCoversTheDesignFamilies) {
  EXPECT_EQ(supported_model_types(), (std::vector<std::string>{"gpt2", "llama", "mistral", "qwen2"}));
  EXPECT_STREQ(find_family("qwen2").name(), "qwen2");
  EXPECT_THROW_WITH(find_family("bert"), ModelConfigError, "'bert' is not supported");
}

TEST(Family, ModulesInExecutionOrderWithHfNames) {
  const ModelDescription d = describe(*storage::Checkpoint::open(test::fixture("llama_gqa")));
  ASSERT_EQ(d.modules.size(), 5u);
  EXPECT_EQ(d.modules[0].name, "model.embed_tokens");
  EXPECT_EQ(d.modules[1].name, "model.layers.0");
  EXPECT_EQ(d.modules[2].layer, 1);
  EXPECT_EQ(d.modules[3].name, "model.norm");
  EXPECT_EQ(d.modules[4].name, "lm_head");
  EXPECT_EQ(d.modules[4].tensors, (std::vector<std::string>{"lm_head.weight"}));
  EXPECT_EQ(d.config.num_kv_heads, 2);
  EXPECT_DOUBLE_EQ(d.config.rope.theta, 50000.0);
}

TEST(Family, EveryCheckpointTensorBelongsToExactlyOneModule) {
  for (const auto& name : test::all_fixtures()) {
    auto ck = storage::Checkpoint::open(test::fixture(name));
    const ModelDescription d = describe(*ck);
    std::map<std::string, int> owners;
    for (const auto& m : d.modules) {
      if (m.kind == ModuleKind::kLmHead && d.config.tie_word_embeddings) continue;  // shares the embedding
      for (const auto& t : m.tensors) owners[t]++;
    }
    for (const auto& t : ck->tensor_names()) EXPECT_EQ(owners[t], 1) << name << ": " << t;
    EXPECT_EQ(owners.size(), ck->tensor_names().size()) << name;
  }
}

TEST(Family, ConfigVariantsAreRead) {
  auto desc = [](const char* n) { return describe(*storage::Checkpoint::open(test::fixture(n))).config; };
  EXPECT_EQ(desc("llama3_tied_bf16").rope.type, "llama3");
  EXPECT_TRUE(desc("llama3_tied_bf16").qkv_bias && desc("llama3_tied_bf16").mlp_bias);
  EXPECT_EQ(desc("llama_linear_sharded_f16").rope.type, "linear");  // legacy rope_scaling spelling
  EXPECT_EQ(desc("mistral_window").sliding_window, 8);
  EXPECT_TRUE(desc("qwen2_tied").qkv_bias);
  EXPECT_FALSE(desc("qwen2_tied").o_bias);
  EXPECT_EQ(desc("gpt2").intermediate_size, 256);
  EXPECT_EQ(describe(*storage::Checkpoint::open(test::fixture("gpt2"))).modules.front().name, "transformer.wte");
}

}  // namespace
}  // namespace cascade::stage
