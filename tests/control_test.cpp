#include "comm/control.h"

#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace cascade::comm {
namespace {

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }

Assignment sample() {
  Assignment a;
  a.rank = 2;
  a.label = "stage 2 (rank 2, cpu:1+disk)";
  a.job = "cascade-1-abc";
  a.heartbeats = "/cascade-1-abc-hb";
  a.model_dir = "/models/x";
  a.dtype = "bfloat16";
  a.device = "cpu:1";
  a.modules = {3, 4, 5};
  a.disk_modules = {5};
  a.stream_slots = 3;
  a.runtime.max_batch = 8;
  a.runtime.mode = config::Mode::kPipeline;
  a.runtime.cuda_graphs = false;
  a.quantization.mode = "int8";
  a.quantization.threshold = 0;
  a.threads = 1;
  a.hops = {{3, 5, {1, Transport::kShm, "/cascade-1-abc-e1", 17}, {0, Transport::kMpi, "/cascade-1-abc-e2", 18}},
            {5, 6, {1, Transport::kNccl, "/cascade-1-abc-e3", 19}, {0, Transport::kMpi, "/cascade-1-abc-e4", 20}}};
  a.rank_labels = {"the coordinator", "stage 1", "stage 2"};
  return a;
}

TEST(Assignment, RoundTripsThroughJson) {
  const Assignment a = sample();
  const Assignment b = decode_assignment(bytes(encode(a)));
  EXPECT_EQ(encode(a), encode(b));
  EXPECT_EQ(b.hops.size(), 2u);
  EXPECT_EQ(b.hops[1].in.name, "/cascade-1-abc-e3");
  EXPECT_EQ(b.hops[1].in.transport, Transport::kNccl);
  EXPECT_EQ(b.disk_modules, std::vector<int64_t>{5});
  EXPECT_EQ(b.stream_slots, 3);
  // The options travel whole.
  EXPECT_EQ(b.runtime.max_batch, 8);
  EXPECT_EQ(b.runtime.mode, config::Mode::kPipeline);
  EXPECT_FALSE(b.runtime.cuda_graphs);
  EXPECT_EQ(b.quantization.mode, "int8");
  EXPECT_EQ(b.quantization.threshold, 0);
  EXPECT_EQ(b.quantization.skip_modules, std::vector<std::string>{"lm_head"});
}

TEST(Assignment, VersionAndFieldErrorsAreNamed) {
  auto edited = [](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(encode(sample()));
    edit(j);
    return bytes(j.dump());
  };
  EXPECT_THROW_WITH(decode_assignment(edited([](auto& j) { j["version"] = 99; })), std::invalid_argument,
                    "assignment version 99", "same build");
  EXPECT_THROW_WITH(decode_assignment(edited([](auto& j) { j.erase("hops"); })), std::invalid_argument,
                    "malformed stage assignment", "hops");
  EXPECT_THROW_WITH(decode_assignment(edited([](auto& j) { j["runtime"]["max_batch"] = "eight"; })),
                    std::invalid_argument, "malformed stage assignment");
  EXPECT_THROW_WITH(decode_assignment(bytes("not json")), std::invalid_argument, "malformed stage assignment");
  EXPECT_THROW_WITH(decode_assignment(bytes(encode(StageStats{}))), std::invalid_argument, "malformed stage assignment",
                    "type \"stats\"");
}

TEST(LoadReports, ProgressAndReadyShareOneTagAndAreToldApart) {
  const auto p = decode_load(bytes(encode(LoadProgress{100, 400, 0.5})));
  ASSERT_TRUE(std::holds_alternative<LoadProgress>(p));
  EXPECT_EQ(std::get<LoadProgress>(p).total, 400u);

  StageReady r;
  r.ok = true;
  r.host = "h";
  r.pid = 42;
  r.kv_bytes = 7;
  r.upload.read_s = 0.25;
  r.device_start_s = 0.125;
  r.connect_s = 0.5;
  r.streamed_bytes = 1 << 20;
  r.stream_slots = 3;
  const auto q = decode_load(bytes(encode(r)));
  ASSERT_TRUE(std::holds_alternative<StageReady>(q));
  EXPECT_EQ(encode(std::get<StageReady>(q)), encode(r));
  EXPECT_EQ(std::get<StageReady>(q).device_start_s, 0.125);
  EXPECT_EQ(std::get<StageReady>(q).connect_s, 0.5);
  EXPECT_EQ(std::get<StageReady>(q).stream_slots, 3);

  StageReady bad;
  bad.error = "cannot open model.safetensors";
  const auto f = std::get<StageReady>(decode_load(bytes(encode(bad))));
  EXPECT_FALSE(f.ok);
  EXPECT_EQ(f.error, bad.error);
  EXPECT_THROW_WITH(decode_load(bytes("{\"type\": \"ready\"}")), std::invalid_argument, "malformed ready report");
  // A fractional number past an int's range (found by control_message_fuzz: "pid" as
  // 4.2e24 made nlohmann's float-to-int conversion undefined) is rejected, not cast.
  std::string huge = encode(r);
  huge.replace(huge.find("\"pid\":42"), 8, "\"pid\":4.2e24");
  EXPECT_THROW_WITH(decode_load(bytes(huge)), std::invalid_argument, "out of range");
}

TEST(StatsAndFailures, RoundTrip) {
  const StageStats s = decode_stats(bytes(encode(StageStats{1.5, 12})));
  EXPECT_EQ(s.busy, 1.5);
  EXPECT_EQ(s.steps, 12);
  EXPECT_EQ(decode_failure(bytes(encode(StageFailure{"step 3: out of memory"}))).error, "step 3: out of memory");
  EXPECT_THROW_WITH(decode_failure(bytes("[]")), std::invalid_argument, "malformed error report");
  EXPECT_STREQ(to_string(Transport::kNccl), "nccl");
}

}  // namespace
}  // namespace cascade::comm
