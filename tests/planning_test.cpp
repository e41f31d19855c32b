// `cascade plan` on real checkpoints: the descriptor comes from the headers alone, and
// the command runs on this GPU-less machine for GPUs given by size.
#include "daemon/planning.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <sstream>

#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

// stdout and stderr together, or stdout alone for --json (on a GPU machine an auto
// offload plan measures the rates first and says so on stderr).
std::string run(const std::string& args, int* status, bool merge_stderr = true) {
  const test::CliRun r = test::run_cascade(args, merge_stderr);
  *status = r.status;
  return r.out;
}

TEST(Descriptor, SizesFromHeadersWithoutReadingData) {
  for (const auto& name : test::all_fixtures()) {
    auto ck = storage::Checkpoint::open(test::fixture(name));
    const planner::ModelDescriptor f32 = build_descriptor(*ck, at::kFloat);
    EXPECT_EQ(ck->bytes_read(), 0u) << name;
    // Every stored tensor is counted once, at 4 bytes per element.
    uint64_t elements = 0;
    for (const auto& t : ck->tensor_names()) elements += ck->info(t).numel();
    EXPECT_EQ(f32.total_weight_bytes(), elements * 4) << name;
    EXPECT_EQ(build_descriptor(*ck, at::kBFloat16).total_weight_bytes(), elements * 2) << name;
    EXPECT_EQ(f32.modules.front().flops_per_token, 0) << name;  // a lookup
    EXPECT_GT(f32.modules[1].kv_bytes_per_token, 0u) << name;
  }
}

TEST(PlanCli, GpusThisMachineLacksCanBePlannedForBySize) {
  int status = 0;
  const std::string out = run("plan --model " + test::fixture("llama_gqa") +
                                  " --max-memory cuda:0=600KiB,cuda:1=600KiB,cpu=2MiB,disk --max-batch 2"
                                  " --max-seq-len 64 --strategy sequential --json",
                              &status, /*merge_stderr=*/false);
  ASSERT_EQ(status, 0) << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["device_map"]["model.embed_tokens"], 0);
  EXPECT_EQ(j["stages"][0]["device"], "cuda:0");
  EXPECT_TRUE(j["devices"].contains("cuda:1"));
  uint64_t weights = 0;
  for (const auto& [dev, u] : j["devices"].items()) weights += u["weights"].get<uint64_t>();
  EXPECT_GE(weights, storage::Checkpoint::open(test::fixture("llama_gqa"))->total_bytes());
}

// T5, as the seed's hf_device_map has it: the encoder on one GPU, the decoder's blocks
// over another GPU and the CPU. Decoder blocks carry self- and cross-attention KV.
TEST(PlanCli, AnEncoderAndItsDecoderCanSitOnDifferentDevices) {
  int status = 0;
  const std::string out = run("plan --model " + test::fixture("t5_v1_1") +
                                  " --max-memory cuda:0=800KiB,cuda:1=1100KiB,cpu=4MiB --max-batch 2"
                                  " --max-seq-len 64 --strategy sequential --json",
                              &status, /*merge_stderr=*/false);
  ASSERT_EQ(status, 0) << out;
  const auto j = nlohmann::json::parse(out);
  const auto& map = j["device_map"];
  for (const char* m : {"shared", "encoder.block.0", "encoder.block.1", "encoder.final_layer_norm"})
    EXPECT_EQ(map[m], 0) << m;
  EXPECT_EQ(map["decoder.block.0"], 1);
  EXPECT_EQ(map["decoder.block.2"], "cpu");
  EXPECT_EQ(map["lm_head"], "cpu");
  // Two decoder blocks on cuda:1, each caching K and V of 4 heads x 16 at every position
  // of a slot (the encoder's tokens, then the decoder's): 2 x 2 slots x 64 positions x
  // 2 x 64 x 4 bytes = 128 KiB.
  EXPECT_EQ(j["devices"]["cuda:1"]["kv"], 128 * 1024) << j["devices"].dump();
  EXPECT_EQ(j["devices"]["cuda:0"]["kv"], 0);  // the encoder caches nothing
}

TEST(PlanCli, ReadableTableFromAConfigFile) {
  test::TempDir dir;
  test::write_file(dir.file("c.toml"), "[model]\npath = \"" + test::fixture("gpt2") +
                                           "\"\n[placement]\nmax_memory = { \"cpu:0\" = \"600KiB\", \"cpu:1\" = "
                                           "\"4MiB\" }\nstrategy = \"sequential\"\n[runtime]\nmax_batch = 2\n"
                                           "max_seq_len = 32\n");
  int status = 0;
  const std::string out = run("plan --config " + dir.file("c.toml"), &status);
  ASSERT_EQ(status, 0) << out;
  for (const char* want : {"budgets: cpu:0 600.00 KiB, cpu:1 4.00 MiB", "transformer.h.1", "rank 2", "used",
                           "predicted decode step: ", " ms at max_batch 2 ("}) {
    EXPECT_NE(out.find(want), std::string::npos) << want << "\n" << out;
  }
}

TEST(PlanCli, ErrorsAreClear) {
  int status = 0;
  // (cuda:15: no machine here has sixteen GPUs, so it cannot be measured.)
  std::string out = run("plan --model " + test::fixture("llama_gqa") + " --max-memory cuda:15,cpu", &status);
  EXPECT_EQ(status, 1);
  EXPECT_NE(out.find("cuda:15 has no size"), std::string::npos) << out;
  out = run("plan --model " + test::fixture("llama_gqa") + " --max-memory cpu=100KiB", &status);
  EXPECT_EQ(status, 1);
  EXPECT_NE(out.find("needs"), std::string::npos) << out;
  EXPECT_NE(out.find("the largest compute budget is 100.00 KiB (cpu:0)"), std::string::npos) << out;
  out = run("plan --model " + test::fixture("llama_gqa") + " --max-memory cpu=1GiB --strategy fastest", &status);
  EXPECT_EQ(status, 1);
  EXPECT_NE(out.find("'fastest' is not one of"), std::string::npos) << out;
  out = run("plan", &status);
  EXPECT_EQ(status, 1);
  EXPECT_NE(out.find("--config FILE or --model DIR"), std::string::npos) << out;
}

}  // namespace
}  // namespace cascade::daemon
