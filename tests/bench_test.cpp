// Pipeline mode through real stage processes, and `cascade bench`'s report and trace.
#include "daemon/bench.h"

#include <set>
#include <sstream>

#include "tests/test_util.h"

namespace cascade::test {
namespace {

using nlohmann::json;

std::vector<std::string> module_names(const std::string& model) {
  const CliRun r = run_cascade("plan --json --model " + model + " --max-memory cpu=1GiB");
  const json plan = json::parse(r.out);
  std::vector<std::string> names;
  for (const auto& [name, device] : plan["device_map"].items()) names.push_back(name);
  return names;
}

// Three stages: cpu:0, cpu:1, and the offload stage's disk tier computing on cpu:2.
std::string three_stages(const TempDir& dir, const std::string& model) {
  const auto names = module_names(model);
  std::ostringstream map;
  for (size_t i = 0; i < names.size(); ++i) {
    const char* d = i < names.size() / 3 ? "cpu:0" : i < 2 * names.size() / 3 ? "cpu:1" : "disk";
    map << (i ? ", " : "") << "\"" << names[i] << "\" = \"" << d << "\"";
  }
  const std::string path = dir.file("three.toml");
  write_file(path,
             "[model]\npath = \"" + model + "\"\ndtype = \"float32\"\n[placement]\nmax_memory = { " +
                 "\"cpu:0\" = \"1GiB\", \"cpu:1\" = \"1GiB\", \"cpu:2\" = \"1GiB\", \"disk\" = \"unlimited\" }\n" +
                 "device_map = { " + map.str() + " }\noffload_folder = \"" + dir.file("off") + "\"\n" +
                 "[runtime]\nmax_batch = 8\nmax_seq_len = 128\nprefill_chunk = 2\n");
  return path;
}

const char* kPrompts =
    "--prompt-ids 1,2,3,4,5,6,7 --prompt-ids 9,8 --prompt-ids 3,1,4,1,5 --prompt-ids 2,7,1,8,2,8,1,8,2 "
    "--prompt-ids 6 --max-new-tokens 7 --json";

std::vector<json> lines(const std::string& out) {
  std::vector<json> v;
  std::istringstream in(out);
  std::string l;
  while (std::getline(in, l))
    if (!l.empty() && l[0] == '{') v.push_back(json::parse(l));
  return v;
}

// M < S, M = S and M > S microbatches over three stages, on every fixture.
TEST(Pipeline, MatchesOneProcessForEveryMicrobatchCount) {
  for (const auto& name : all_fixtures()) {
    TempDir dir;
    const std::string cfg = three_stages(dir, fixture(name));
    const auto single = lines(run_cascade("generate --model " + fixture(name) + " --dtype float32 " + kPrompts).out);
    ASSERT_EQ(single.size(), 5u);
    for (int m : {2, 3, 5}) {
      const CliRun r =
          run_cascade("generate --config " + cfg +
                      " --set runtime.mode=pipeline --set runtime.microbatches=" + std::to_string(m) + " " + kPrompts);
      ASSERT_EQ(r.status, 0) << name << " M=" << m;
      const auto got = lines(r.out);
      ASSERT_EQ(got.size(), 5u);
      for (size_t i = 0; i < 5; ++i) EXPECT_EQ(got[i]["output_ids"], single[i]["output_ids"]) << name << " M=" << m;
    }
  }
}

TEST(Pipeline, AStageMuchSlowerThanTheOthersNeitherDeadlocksNorStarves) {
  TempDir dir;
  const std::string cfg = three_stages(dir, fixture("llama_gqa"));
  const auto single =
      lines(run_cascade("generate --model " + fixture("llama_gqa") + " --dtype float32 " + kPrompts).out);
  const CliRun r =
      run_shell("CASCADE_FAULT=2:step=0:slow " + std::string(CASCADE_BINARY) + " generate --config " + cfg +
                " --set runtime.mode=pipeline --set runtime.microbatches=4 " + kPrompts + " 2>/dev/null");
  ASSERT_EQ(r.status, 0);
  const auto got = lines(r.out);
  ASSERT_EQ(got.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(got[i]["output_ids"], single[i]["output_ids"]);
}

TEST(Bench, JsonHasEveryFieldAndTheTraceShowsEveryStage) {
  TempDir dir;
  const std::string cfg = three_stages(dir, fixture("llama_gqa"));
  const std::string trace = dir.file("trace.json");
  const CliRun r = run_cascade("bench --config " + cfg +
                               " --requests 6 --prompt-len 9 --new-tokens 5 --concurrency 3 --json --trace " + trace);
  ASSERT_EQ(r.status, 0) << r.out;
  const json j = json::parse(r.out);
  for (const char* mode : {"sequential", "pipeline"}) {
    ASSERT_TRUE(j.contains(mode)) << r.out;
    for (const char* k :
         {"tokens_per_s", "total_tokens_per_s", "ttft_p50_s", "ttft_p99_s", "wall_s", "generated_tokens",
          "prompt_tokens", "failed_requests", "stage_busy_pct", "microbatches", "token_interval_p50_s"})
      EXPECT_TRUE(j[mode].contains(k)) << mode << " lacks " << k;
    // 5 tokens a request: the median interval between them lies inside the mode's wall time.
    EXPECT_GT(j[mode]["token_interval_p50_s"].get<double>(), 0);
    EXPECT_LT(j[mode]["token_interval_p50_s"].get<double>(), j[mode]["wall_s"].get<double>());
    EXPECT_EQ(j[mode]["generated_tokens"], 30);
    EXPECT_EQ(j[mode]["failed_requests"], 0);
    EXPECT_EQ(j[mode]["stage_busy_pct"].size(), 3u);
    // A share of the mode's wall time, and not zero for a mode shorter than the stages'
    // 250 ms reports: each stage reports when it goes idle, so neither end of the mode
    // reads a figure from before it.
    for (const auto& [stage, pct] : j[mode]["stage_busy_pct"].items()) {
      EXPECT_GT(pct.get<double>(), 0) << mode << " " << stage;
      EXPECT_LE(pct.get<double>(), 100.5) << mode << " " << stage;
    }
    EXPECT_GT(j[mode]["tokens_per_s"].get<double>(), 0);
  }
  EXPECT_GT(j["predicted_step_s"].get<double>(), 0);  // the cost model's step of 3 tokens
  EXPECT_EQ(j["sequential"]["microbatches"], 1);
  EXPECT_EQ(j["pipeline"]["microbatches"], 3);
  EXPECT_NEAR(j["ratio"].get<double>(),
              j["pipeline"]["tokens_per_s"].get<double>() / j["sequential"]["tokens_per_s"].get<double>(), 1e-9);

  const json t = read_json(trace);
  std::set<std::pair<int, std::string>> seen;
  std::set<std::string> modes;
  std::set<int> microbatches;
  for (const auto& e : t["traceEvents"]) {
    if (e["ph"] != "X") continue;
    if (e["tid"] == 0) {
      modes.insert(e["name"].get<std::string>());
      continue;
    }
    seen.insert({e["tid"].get<int>(), e["name"].get<std::string>()});
    ASSERT_TRUE(e["args"].contains("step") && e["args"].contains("microbatch"));
    microbatches.insert(e["args"]["microbatch"].get<int>());
    EXPECT_GE(e["dur"].get<int64_t>(), 0);
  }
  for (int stage = 1; stage <= 3; ++stage)
    for (const char* span : {"compute", "send", "recv"})
      EXPECT_TRUE(seen.count({stage, span})) << "stage " << stage << " has no " << span << " span";
  EXPECT_EQ(modes, (std::set<std::string>{"sequential", "pipeline"}));
  EXPECT_GE(microbatches.size(), 2u);
}

// A mode whose stage stalls fails the benchmark with the reason, instead of printing a
// rate over failed requests and exiting 0 (issue 19, item 8).
TEST(Bench, AModeThatFailsExitsNonZeroWithTheReason) {
  TempDir dir;
  const CliRun r = run_shell("CASCADE_FAULT=2:step=8:stall " + std::string(CASCADE_BINARY) + " bench --config " +
                             three_stages(dir, fixture("llama_gqa")) +
                             " --set runtime.heartbeat_timeout=2 --requests 4 --prompt-len 4 --new-tokens 6"
                             " --concurrency 2 2>&1");
  EXPECT_NE(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("mode"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("failed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("stage 2"), std::string::npos) << r.out;  // the failure names the stage
  EXPECT_EQ(r.out.find("tok/s"), std::string::npos) << "printed a rate anyway:\n" << r.out;
}

TEST(Bench, OneRequestAtATimeIsReportedAsSuch) {
  TempDir dir;
  const CliRun r = run_cascade("bench --config " + three_stages(dir, fixture("llama_gqa")) +
                               " --requests 2 --prompt-len 4 --new-tokens 3 --concurrency 1");
  ASSERT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("pipeline / sequential:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("a sequence cannot be in two stages at once"), std::string::npos) << r.out;
  const CliRun bad =
      run_cascade("bench --config " + three_stages(dir, fixture("llama_gqa")) + " --concurrency 9", true);
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("--concurrency 9 exceeds runtime.max_batch 8"), std::string::npos) << bad.out;
}

}  // namespace
}  // namespace cascade::test
