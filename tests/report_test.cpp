#include "planner/report.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace cascade::planner {
namespace {

constexpr uint64_t MiB = 1ull << 20;

PlanRequest two_stage_request() {
  PlanRequest r;
  r.model.model_type = "llama";
  r.model.vocab_size = 32;
  r.model.act_bytes_per_token = 2 * (4 * 8 + 3 * 16 + 6 * 4);  // hidden 8, intermediate 16, 2 heads of 4
  r.model.score_heads = 2;
  r.model.modules = {{"model.embed_tokens", ModuleKind::kEmbedding, {{"e", 10 * MiB}}, 0, 0},
                     {"model.layers.0", ModuleKind::kLayer, {{"l0", 10 * MiB}}, 1, 64},
                     {"model.layers.1", ModuleKind::kLayer, {{"l1", 10 * MiB}}, 1, 64},
                     {"lm_head", ModuleKind::kHead, {{"h", 10 * MiB}}, 1, 0}};
  r.budgets = {{config::parse_device("cuda:0"), 25 * MiB},
               {config::parse_device("cpu"), 100 * MiB},
               {config::parse_device("disk"), std::nullopt}};
  r.offload_compute = "cpu";
  r.model.embedding_movable = false;  // accelerate's order: a two-stage route (plan_test covers the move)
  return r;
}

TEST(Report, JsonHasEverySection) {
  const PlanRequest r = two_stage_request();
  const auto j = nlohmann::json::parse(plan_json(r.model, make_plan(r)));
  EXPECT_EQ(j["device_map"]["model.embed_tokens"], 0);  // GPUs as integers, like hf_device_map
  EXPECT_EQ(j["device_map"]["lm_head"], "cpu");
  EXPECT_EQ(j["offload_compute"], "cpu");
  EXPECT_GT(j["predicted_step_s"].get<double>(), 0);
  ASSERT_EQ(j["stages"].size(), 2u);
  EXPECT_EQ(j["stages"][1]["device"], "cpu:0");
  EXPECT_EQ(j["route"].size(), 2u);
  EXPECT_EQ(j["edges"].size(), 3u);
  EXPECT_EQ(j["edges"][1]["transport"], "shm");
  for (const char* dev : {"cuda:0", "cpu:0", "disk"}) {
    ASSERT_TRUE(j["devices"].contains(dev)) << dev;
    for (const char* k : {"budget", "weights", "kv", "activations", "staging"})
      EXPECT_TRUE(j["devices"][dev].contains(k));
  }
  EXPECT_TRUE(j["devices"]["disk"]["budget"].is_null());
  EXPECT_EQ(j["devices"]["cuda:0"]["budget"], 25 * MiB);
}

TEST(Report, TableShowsDevicesBudgetsAndRoute) {
  const PlanRequest r = two_stage_request();
  const std::string t = format_plan(r.model, make_plan(r));
  for (const char* want : {"model.layers.1", "cuda:0", "25.00 MiB", "unlimited", "used", "rank 2", "%",
                           "route: coordinator -mpi-> rank 1 -shm-> rank 2 -mpi-> coordinator"}) {
    EXPECT_NE(t.find(want), std::string::npos) << want << "\n" << t;
  }
}

}  // namespace
}  // namespace cascade::planner
