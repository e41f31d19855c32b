#include "stage/model_config.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "stage/family.h"
#include "stage/model.h"
#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

ModelConfig llama(const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = test::read_json(test::fixture("llama_gqa") + "/config.json");
  edit(j);
  return find_family("llama").parse_config(j);
}

TEST(ModelConfig, EveryFixturesConfigPasses) {
  for (const std::string& name : test::every_fixture()) {
    const nlohmann::json j = test::read_json(test::fixture(name) + "/config.json");
    const Family& f = find_family(j["model_type"].get<std::string>());
    EXPECT_NO_THROW(cfg::check_model_config(f.parse_config(j))) << name;
  }
}

// Each value a config.json may get wrong, named in the error with what it must be.
TEST(ModelConfig, RefusesSizesNoModelHas) {
  const std::pair<const char*, nlohmann::json> cases[] = {
      {"num_hidden_layers", -3},      {"num_hidden_layers", 1000000000000},
      {"num_hidden_layers", 0},       {"vocab_size", -5},
      {"intermediate_size", 0},       {"hidden_size", -64},
      {"max_position_embeddings", -1}};
  const char* const named[] = {"number of layers is -3",       "number of layers is 1000000000000",
                               "number of layers is 0",        "vocabulary size is -5",
                               "intermediate (MLP) size is 0", "hidden size is -64",
                               "max_position_embeddings is -1"};
  for (size_t i = 0; i < std::size(cases); ++i) {
    const auto& [key, value] = cases[i];
    SCOPED_TRACE(std::string(key) + " = " + value.dump());
    try {
      cfg::check_model_config(llama([&](nlohmann::json& j) {
        j[key] = value;
        if (std::string(key) == "hidden_size") j["head_dim"] = 16;  // past read_standard's own check
      }));
      ADD_FAILURE() << "accepted";
    } catch (const ModelConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(named[i]), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("llama's"), std::string::npos) << e.what();
    }
  }
}

TEST(ModelConfig, RefusesNormAndRopeNumbersThatGiveNaNs) {
  EXPECT_THROW_WITH(cfg::check_model_config(llama([](nlohmann::json& j) { j["rms_norm_eps"] = -1e-6; })),
                    ModelConfigError, "norm epsilon", ">= 0");
  EXPECT_NO_THROW(cfg::check_model_config(llama([](nlohmann::json& j) { j["rms_norm_eps"] = 0; })));
  EXPECT_THROW_WITH(cfg::check_model_config(llama([](nlohmann::json& j) {
                      j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 0}};
                    })),
                    ModelConfigError, "rope_theta is 0", "> 0");
  EXPECT_THROW_WITH(cfg::check_model_config(llama([](nlohmann::json& j) {
                      j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", -2}, {"rope_theta", 1e4}};
                    })),
                    ModelConfigError, "RoPE scaling factor");
  // llama3's smoothing divides by high_freq_factor - low_freq_factor.
  EXPECT_THROW_WITH(cfg::check_model_config(llama([](nlohmann::json& j) {
                      j["rope_parameters"] = {{"rope_type", "llama3"},
                                              {"factor", 8.0},
                                              {"low_freq_factor", 4.0},
                                              {"high_freq_factor", 4.0},
                                              {"original_max_position_embeddings", 64},
                                              {"rope_theta", 1e4}};
                    })),
                    ModelConfigError, "high_freq_factor must be finite and above low_freq_factor");
}

// describe() of llama_gqa with its config.json edited, as every load and plan runs it.
ModelDescription describe_edited(const std::function<void(nlohmann::json&)>& edit) {
  test::TempDir dir;
  std::filesystem::copy(test::fixture("llama_gqa"), dir.file("m"), std::filesystem::copy_options::recursive);
  auto j = test::read_json(dir.file("m/config.json"));
  edit(j);
  test::write_file(dir.file("m/config.json"), j.dump());
  return describe(*storage::Checkpoint::open(dir.file("m")));
}

// 10^12 layers used to have their modules listed first (8 GB in 20 s on the development
// VM, then the OOM killer).
TEST(ModelConfig, ACheckpointThatClaimsTrillionsOfLayersFailsAtOnce) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW_WITH(describe_edited([](nlohmann::json& j) { j["num_hidden_layers"] = 1000000000000; }),
                    ModelConfigError, "/m/config.json", "number of layers is 1000000000000");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(ModelConfig, DescribeNamesAMissingOrMistypedModelType) {
  EXPECT_THROW_WITH(describe_edited([](nlohmann::json& j) { j["model_type"] = 5; }), ModelConfigError,
                    "'model_type' must be a string, not number");
  EXPECT_THROW_WITH(describe_edited([](nlohmann::json& j) { j.erase("model_type"); }), ModelConfigError,
                    "'model_type' is missing");
}

}  // namespace
}  // namespace cascade::stage
