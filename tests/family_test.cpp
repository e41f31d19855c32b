#include "stage/family.h"

#include <gtest/gtest.h>

#include <cmath>

#include "stage/model.h"
#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

TEST(Family, RegistryCoversTheDesignFamilies) {
  const std::vector<std::string> types = supported_model_types();
  for (const char* t : {"gpt2", "llama", "mistral", "qwen2"})
    EXPECT_NE(std::find(types.begin(), types.end(), t), types.end()) << t;
  for (const auto& name : test::all_fixtures()) {  // every fixture's family is registered
    const auto ref = test::read_json(test::fixture(name) + "/reference.json");
    EXPECT_STREQ(find_family(ref["model_type"].get<std::string>()).name(),
                 ref["model_type"].get<std::string>().c_str());
  }
  EXPECT_GE(test::all_fixtures().size(), 7u);
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

// For the dense families the declared FLOPs are the old size rule: one multiply-add
// per weight of every matrix but the embedding's; KV is K and V per token. A mixture of
// experts charges each expert's weights by the share of tokens it sees (top_k of E):
// only the active experts' FLOPs, while every expert's tensor is in the module (bytes).
TEST(Family, DeclaredCostsMatchTheWeights) {
  for (const auto& name : test::all_fixtures()) {
    auto ck = storage::Checkpoint::open(test::fixture(name));
    const ModelDescription d = describe(*ck);
    const nlohmann::json& j = d.config.json;
    const bool moe = j.contains("num_experts_per_tok");
    const double active = moe ? j["num_experts_per_tok"].get<double>() / j["num_local_experts"].get<double>() : 1;
    for (const auto& m : d.modules) {
      double flops = 0;
      for (const auto& t : m.tensors) {
        const auto& info = ck->info(t);
        const double share = t.find(".experts.") != std::string::npos ? active : 1.0;
        if (info.shape.size() >= 2 && m.kind != ModuleKind::kEmbedding) flops += 2.0 * info.numel() * share;
        const auto read = m.cost.read_share.find(t);  // what the planner's cost model reads
        EXPECT_DOUBLE_EQ(read == m.cost.read_share.end() ? 1.0 : read->second, share) << name << " " << t;
      }
      EXPECT_DOUBLE_EQ(m.cost.flops_per_token, flops) << name << " " << m.name;
      const bool layer = m.kind == ModuleKind::kDecoderLayer, experts = m.kind == ModuleKind::kExperts;
      EXPECT_EQ(m.cost.kv_elems_per_token, layer ? 2 * d.config.num_kv_heads * d.config.head_dim : 0) << m.name;
      EXPECT_EQ(m.int8.empty(), !layer && !experts) << name << " " << m.name;  // only layers' projections
      // A mixture of experts' expert block is a module of its own, right after its attention.
      if (experts) {
        const auto& prev = d.modules[static_cast<size_t>(&m - d.modules.data()) - 1];
        EXPECT_EQ(prev.kind, ModuleKind::kDecoderLayer) << name << " " << m.name;
        EXPECT_EQ(m.name.rfind(prev.name + ".", 0), 0u) << name << " " << m.name;
        EXPECT_EQ(m.layer, prev.layer) << name << " " << m.name;
      }
      if (layer && moe) {  // its attention half holds no expert
        for (const auto& t : m.tensors) EXPECT_EQ(t.find(".experts."), std::string::npos) << name << " " << t;
      }
    }
    size_t expert_blocks = 0;
    for (const auto& m : d.modules) expert_blocks += m.kind == ModuleKind::kExperts;
    EXPECT_EQ(expert_blocks, moe ? static_cast<size_t>(d.config.num_layers) : 0u) << name;
    const ModelConfig& c = d.config;
    if (moe) continue;  // its activations: the router's scores and top_k experts' (mlp_test)
    EXPECT_EQ(d.modules[1].cost.act_elems_per_token,
              4 * c.hidden_size + 3 * c.intermediate_size + (c.num_heads + 2 * c.num_kv_heads) * c.head_dim)
        << name;
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

// Phi-3's and Bloom's config.json keys, as the hub's checkpoints spell them.
TEST(Family, Phi3AndBloomConfigsAreRead) {
  nlohmann::json phi = {
      {"vocab_size", 64},
      {"hidden_size", 64},
      {"intermediate_size", 96},
      {"num_hidden_layers", 2},
      {"num_attention_heads", 4},
      {"max_position_embeddings", 131072},
      {"original_max_position_embeddings", 4096},
      {"rope_scaling",
       {{"type", "su"}, {"short_factor", std::vector<double>(8, 1.0)}, {"long_factor", std::vector<double>(8, 2.0)}}}};
  ModelConfig c = find_family("phi3").parse_config(phi);
  EXPECT_EQ(c.rope.type, "longrope");  // "su": the early name
  EXPECT_EQ(c.rope.original_max_position, 4096);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);  // max / original, as transformers computes it
  EXPECT_NEAR(c.rope.attention_factor, std::sqrt(1 + std::log(32.0) / std::log(4096.0)), 1e-12);
  phi["partial_rotary_factor"] = 0.75;  // 12 of 16 dims rotate: 6 factors, not 8
  EXPECT_THROW_WITH(find_family("phi3").parse_config(phi), ModelConfigError, "'short_factor' has 8 entries");
  phi["rope_scaling"]["short_factor"] = phi["rope_scaling"]["long_factor"] = std::vector<double>(6, 1.0);
  phi["rope_scaling"]["attention_factor"] = 1.25;
  c = find_family("phi3").parse_config(phi);
  EXPECT_EQ(c.rope.rotary_dim(c.head_dim), 12);
  EXPECT_DOUBLE_EQ(c.rope.attention_factor, 1.25);
  phi["partial_rotary_factor"] = 0.7;  // 11.2 -> 11 dims: odd
  EXPECT_THROW_WITH(find_family("phi3").parse_config(phi), ModelConfigError, "needs an even number");

  nlohmann::json bloom = {{"vocab_size", 64}, {"n_embed", 96}, {"n_layer", 2}, {"num_attention_heads", 6}};
  c = find_family("bloom").parse_config(bloom);
  EXPECT_EQ(c.hidden_size, 96);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.intermediate_size, 384);
  EXPECT_TRUE(c.tie_word_embeddings && c.qkv_bias && c.o_bias && c.mlp_bias);
  bloom["apply_residual_connection_post_layernorm"] = true;
  EXPECT_THROW_WITH(find_family("bloom").parse_config(bloom), ModelConfigError,
                    "'apply_residual_connection_post_layernorm': true is not supported");
}

}  // namespace
}  // namespace cascade::stage
