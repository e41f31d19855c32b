#include "config/config.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace cascade::config {
namespace {

Config parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return parse_config(text, "cfg.toml", "/base", overrides);
}

TEST(Config, ParsesEveryFieldOfTheDesignExample) {
  const Config c = parse(R"([model]
path = "models/tiny"
dtype = "bfloat16"

[placement]
strategy = "balanced_low_0"
max_memory = { "cuda:0" = "20GiB", 1 = "10GB", "cpu" = "64GiB", "disk" = "unlimited" }
device_map = { "model.embed_tokens" = "cuda:0", "model.layers.0" = 0, "lm_head" = "cpu" }
offload_folder = "/abs/offload"
offload_compute = "cuda:0"
experts = "offload"

[runtime]
mode = "pipeline"
microbatches = 3
max_batch = 8
max_seq_len = 1024
threads_per_stage = 2

[quantization]
mode = "int8"
threshold = 4
skip_modules = ["lm_head", "model.embed_tokens"]

[server]
socket = "run/cascade.sock"
tcp = "127.0.0.1:8000"
api_key = "secret"
max_request_bytes = "2MiB"
max_connections = 16
max_pending_connections = 8
max_restarts = 0
)");
  EXPECT_EQ(c.model.path, "/base/models/tiny");  // relative to the config file's folder
  EXPECT_EQ(c.model.dtype, "bfloat16");
  EXPECT_EQ(c.placement.strategy, Strategy::kBalancedLow0);
  ASSERT_EQ(c.placement.max_memory.size(), 4u);
  EXPECT_EQ(c.placement.max_memory[0].device.str(), "cuda:0");
  EXPECT_EQ(*c.placement.max_memory[0].bytes, 20ull << 30);
  EXPECT_EQ(c.placement.max_memory[1].device.str(), "cuda:1");
  EXPECT_EQ(*c.placement.max_memory[1].bytes, 10'000'000'000ull);
  EXPECT_EQ(c.placement.max_memory[2].device.str(), "cpu:0");
  EXPECT_FALSE(c.placement.max_memory[3].bytes.has_value());
  ASSERT_EQ(c.placement.device_map.size(), 3u);
  EXPECT_EQ(c.placement.device_map[1].first, "model.layers.0");
  EXPECT_EQ(c.placement.device_map[1].second.str(), "cuda:0");
  EXPECT_EQ(c.placement.offload_folder, "/abs/offload");
  EXPECT_EQ(c.placement.offload_compute, "cuda:0");
  EXPECT_EQ(c.placement.experts, ExpertPlacement::kOffload);
  EXPECT_EQ(c.runtime.mode, Mode::kPipeline);
  EXPECT_EQ(c.runtime.microbatches, 3);
  EXPECT_EQ(c.runtime.max_batch, 8);
  EXPECT_EQ(c.runtime.max_seq_len, 1024);
  EXPECT_EQ(c.runtime.threads_per_stage, 2);
  EXPECT_EQ(c.quantization.mode, "int8");
  EXPECT_DOUBLE_EQ(c.quantization.threshold, 4.0);
  EXPECT_EQ(c.quantization.skip_modules.size(), 2u);
  EXPECT_EQ(c.server.socket, "/base/run/cascade.sock");
  EXPECT_EQ(c.server.tcp, "127.0.0.1:8000");
  EXPECT_EQ(c.server.max_request_bytes, 2ull << 20);
  EXPECT_EQ(c.server.max_connections, 16);
  EXPECT_EQ(c.server.max_pending_connections, 8);
  EXPECT_EQ(c.server.max_restarts, 0);
}

TEST(Config, DefaultsFillEverythingButTheModel) {
  const Config c = parse("[model]\npath = \"/m\"\n");
  EXPECT_EQ(c.model.dtype, "auto");
  EXPECT_EQ(c.placement.strategy, Strategy::kAuto);
  EXPECT_EQ(c.runtime.mode, Mode::kSequential);
  EXPECT_EQ(c.runtime.max_batch, 16);
  EXPECT_EQ(c.runtime.max_seq_len, 2048);
  EXPECT_EQ(c.quantization.mode, "none");
  EXPECT_EQ(c.server.max_connections, 256);
  EXPECT_EQ(c.server.max_pending_connections, 128);
  EXPECT_EQ(c.server.max_restarts, 5);
  EXPECT_EQ(c.placement.offload_compute, "auto");
  EXPECT_EQ(c.placement.experts, ExpertPlacement::kAuto);
  EXPECT_TRUE(c.runtime.cuda_graphs);
  EXPECT_FALSE(parse("[model]\npath = \"/m\"\n[runtime]\ncuda_graphs = false\n").runtime.cuda_graphs);
  EXPECT_FALSE(c.runtime.pin_cores);
  EXPECT_TRUE(parse("[model]\npath = \"/m\"\n[runtime]\npin_cores = true\n").runtime.pin_cores);
}

TEST(Config, UnknownKeyNamesFileLineAndKey) {
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[runtime]\nmax_batch = 4\nmxa_batch = 4\n"), ConfigError,
                    "cfg.toml:5", "runtime.mxa_batch", "unknown key", "max_batch");
}

TEST(Config, UnknownSection) {
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[runtme]\nmode = \"pipeline\"\n"), ConfigError, "cfg.toml:3",
                    "runtme", "unknown section");
}

TEST(Config, WrongType) {
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[runtime]\nmax_batch = \"16\"\n"), ConfigError, "cfg.toml:4",
                    "runtime.max_batch", "expected an integer, got a string");
  EXPECT_THROW_WITH(parse("[model]\npath = 3\n"), ConfigError, "cfg.toml:2", "model.path", "expected a string");
  EXPECT_THROW_WITH(parse("model = 1\n"), ConfigError, "cfg.toml:1", "model", "expected a table");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[runtime]\ncuda_graphs = 1\n"), ConfigError, "cfg.toml:4",
                    "runtime.cuda_graphs", "expected true or false, got an integer");
}

// TOML spells nan and inf; neither is a duration (issue 19: header_timeout = nan
// dropped every connection at once). Each is refused with file:line:key.
TEST(Config, DurationsAreFiniteAndPositive) {
  for (const char* v : {"nan", "inf", "-inf", "+nan"}) {
    EXPECT_THROW_WITH(parse(std::string("[model]\npath = \"/m\"\n[server]\nheader_timeout = ") + v + "\n"), ConfigError,
                      "cfg.toml:4", "server.header_timeout", "must be a finite number");
    EXPECT_THROW_WITH(parse(std::string("[model]\npath = \"/m\"\n[runtime]\nstep_timeout = ") + v + "\n"), ConfigError,
                      "cfg.toml:4", "runtime.step_timeout", "must be a finite number");
  }
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[server]\nidle_timeout = -5\n"), ConfigError, "cfg.toml:4",
                    "server.idle_timeout", "must be in [");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[server]\nshutdown_grace = 1e300\n"), ConfigError, "cfg.toml:4",
                    "server.shutdown_grace", "must be in [");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[quantization]\nthreshold = nan\n"), ConfigError, "cfg.toml:4",
                    "quantization.threshold", "must be a finite number");
  EXPECT_DOUBLE_EQ(parse("[model]\npath = \"/m\"\n[server]\nheader_timeout = 2.5\n").server.header_timeout, 2.5);
}

TEST(Config, BadSize) {
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\nmax_memory = { \"cuda:0\" = \"12 GiBs\" }\n"),
                    ConfigError, "cfg.toml:4", "placement.max_memory.cuda:0", "invalid size '12 GiBs'");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[server]\nmax_request_bytes = \"lots\"\n"), ConfigError,
                    "cfg.toml:4", "server.max_request_bytes", "invalid size 'lots'");
}

TEST(Config, AHybridOffloadAndItsShare) {
  const Config c =
      parse("[model]\npath = \"/m\"\n[placement]\noffload_compute = \"cpu+cuda:0\"\nstreamed_share = 0.25\n");
  EXPECT_EQ(c.placement.offload_compute, "cpu+cuda:0");
  ASSERT_TRUE(c.placement.streamed_share.has_value());
  EXPECT_DOUBLE_EQ(*c.placement.streamed_share, 0.25);
  EXPECT_FALSE(parse("[model]\npath = \"/m\"\n").placement.streamed_share.has_value());  // the cost model's
}

TEST(Config, StreamSlotsACountOrAuto) {
  const auto slots = [](const std::string& v) {
    return parse("[model]\npath = \"/m\"\n[placement]\nstream_slots = " + v + "\n").placement.stream_slots;
  };
  EXPECT_EQ(parse("[model]\npath = \"/m\"\n").placement.stream_slots, 2);  // a double buffer
  EXPECT_EQ(slots("3"), 3);
  EXPECT_EQ(slots("\"auto\""), kAutoStreamSlots);
  EXPECT_THROW_WITH(slots("1"), ConfigError, "cfg.toml:4", "placement.stream_slots", "out of range [2, 8]");
  EXPECT_THROW_WITH(slots("9"), ConfigError, "placement.stream_slots", "out of range [2, 8]");
  EXPECT_THROW_WITH(slots("\"many\""), ConfigError, "placement.stream_slots", "\"auto\"", "\"many\"");
  EXPECT_THROW_WITH(slots("2.5"), ConfigError, "placement.stream_slots", "expected an integer");
}

TEST(Config, BadEnumValues) {
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[runtime]\nmode = \"pipelined\"\n"), ConfigError, "cfg.toml:4",
                    "runtime.mode", "'pipelined' is not one of", "pipeline", "sequential");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\ndtype = \"fp8\"\n"), ConfigError, "cfg.toml:3", "model.dtype",
                    "'fp8'");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\nstrategy = \"greedy\"\n"), ConfigError,
                    "placement.strategy", "'greedy'");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\noffload_compute = \"gpu\"\n"), ConfigError,
                    "cfg.toml:4", "placement.offload_compute", "'gpu'");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\noffload_compute = \"cpu+cpu:1\"\n"), ConfigError,
                    "placement.offload_compute", "'cpu+cpu:1'", "cpu+cuda:N");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\nstreamed_share = 0.5\n"), ConfigError, "cfg.toml:4",
                    "placement.streamed_share", "cpu+cuda:N", "\"auto\"");
  EXPECT_THROW_WITH(
      parse("[model]\npath = \"/m\"\n[placement]\noffload_compute = \"cpu+cuda:0\"\nstreamed_share = 1.5\n"),
      ConfigError, "cfg.toml:5", "placement.streamed_share", "must be in [0");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\nexperts = \"cpu\"\n"), ConfigError, "cfg.toml:4",
                    "placement.experts", "'cpu' is not one of", "auto", "offload", "with-layer");
}

TEST(Config, BadDevicesAndRanges) {
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\nmax_memory = { \"gpu0\" = \"1GiB\" }\n"), ConfigError,
                    "placement.max_memory.gpu0", "invalid device 'gpu0'");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\ndevice_map = { \"lm_head\" = \"tpu\" }\n"), ConfigError,
                    "cfg.toml:4", "placement.device_map.lm_head", "invalid device 'tpu'");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[runtime]\nmax_batch = 0\n"), ConfigError, "runtime.max_batch",
                    "out of range");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[server]\ntcp = \"localhost\"\n"), ConfigError, "server.tcp",
                    "host:port");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[placement]\nmax_memory = { \"cpu\" = \"1GiB\", \"cpu:0\" = 5 }\n"),
                    ConfigError, "cpu:0", "listed twice");
}

TEST(Config, SyntaxErrorHasLineAndColumn) {
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n[runtime\n"), ConfigError, "cfg.toml:3:", "TOML syntax error");
}

TEST(Config, ModelPathIsRequired) {
  EXPECT_THROW_WITH(parse("[runtime]\nmax_batch = 2\n"), ConfigError, "model.path", "is required");
}

TEST(Config, OverridesApplyBeforeValidation) {
  const Config c = parse("[model]\npath = \"/m\"\n",
                         {"runtime.mode=pipeline", "runtime.max_batch=8", "placement.max_memory.cuda:0=4GiB",
                          "placement.device_map.\"model.layers.0\"=cpu", "placement.device_map.model.norm=disk",
                          "model.path=rel/dir", "quantization.skip_modules=[\"a\", \"b\"]"});
  EXPECT_EQ(c.runtime.mode, Mode::kPipeline);
  EXPECT_EQ(c.runtime.max_batch, 8);
  ASSERT_EQ(c.placement.max_memory.size(), 1u);
  EXPECT_EQ(*c.placement.max_memory[0].bytes, 4ull << 30);
  ASSERT_EQ(c.placement.device_map.size(), 2u);
  EXPECT_EQ(c.placement.device_map[0].first, "model.layers.0");
  EXPECT_EQ(c.placement.device_map[1].first, "model.norm");
  EXPECT_EQ(c.placement.device_map[1].second.str(), "disk");
  EXPECT_EQ(c.model.path, "rel/dir");  // given on the command line: relative to the working directory
  EXPECT_EQ(c.quantization.skip_modules, (std::vector<std::string>{"a", "b"}));
}

TEST(Config, BadOverridesNameTheFlag) {
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n", {"runtime.max_batch=abc"}), ConfigError,
                    "--set runtime.max_batch=abc", "expected an integer");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n", {"runtime.max_batch"}), ConfigError, "--set runtime.max_batch",
                    "section.key=value");
  EXPECT_THROW_WITH(parse("[model]\npath = \"/m\"\n", {"runtime.bogus=1"}), ConfigError, "--set runtime.bogus=1",
                    "unknown key");
}

TEST(Config, LoadConfigReadsARealFile) {
  test::TempDir dir;
  test::write_file(dir.file("c.toml"), "[model]\npath = \"ckpt\"\n[runtime]\nmax_batch = 3\n");
  const Config c = load_config(dir.file("c.toml"), {"runtime.max_seq_len=64"});
  EXPECT_EQ(c.model.path, dir.path() + "/ckpt");
  EXPECT_EQ(c.runtime.max_batch, 3);
  EXPECT_EQ(c.runtime.max_seq_len, 64);
  EXPECT_THROW_WITH(load_config(dir.file("missing.toml")), ConfigError, "missing.toml", "cannot open");
  test::write_file(dir.file("bad.toml"), "[model]\npath = \"ckpt\"\n[runtime]\nmax_batch = -1\n");
  EXPECT_THROW_WITH(load_config(dir.file("bad.toml")), ConfigError, dir.file("bad.toml") + ":4", "runtime.max_batch");
}

TEST(DeviceName, ParsesAccelerateSpellings) {
  EXPECT_EQ(parse_device("cuda:3").str(), "cuda:3");
  EXPECT_EQ(parse_device("2").str(), "cuda:2");
  EXPECT_EQ(parse_device("cpu").str(), "cpu:0");
  EXPECT_EQ(parse_device("cpu:1").str(), "cpu:1");
  EXPECT_EQ(parse_device("disk").str(), "disk");
  EXPECT_THROW(parse_device("cuda:"), std::invalid_argument);
  EXPECT_THROW(parse_device("cuda:-1"), std::invalid_argument);
  EXPECT_THROW(parse_device("mps"), std::invalid_argument);
}

}  // namespace
}  // namespace cascade::config

namespace cascade::config {
namespace {

// CASCADE_<SECTION>_<KEY> variables override the file, and the command line overrides
// them; other CASCADE_* variables are not config; a misspelt key is named.
// One parser for offload_compute, shared by the config's check and the planner.
TEST(OffloadCompute, TakesEachFormApart) {
  EXPECT_FALSE(parse_offload_compute("auto").gpu);
  EXPECT_FALSE(parse_offload_compute("cpu").gpu);
  const OffloadCompute stream = parse_offload_compute("cuda:1");
  EXPECT_FALSE(stream.hybrid);
  ASSERT_TRUE(stream.gpu);
  EXPECT_EQ(stream.gpu->str(), "cuda:1");
  const OffloadCompute hybrid = parse_offload_compute("cpu+0");
  EXPECT_TRUE(hybrid.hybrid);
  ASSERT_TRUE(hybrid.gpu);
  EXPECT_EQ(hybrid.gpu->str(), "cuda:0");
  for (const char* bad : {"disk", "cpu+cpu", "cpu+", "gpu", "cpu:1", ""})
    EXPECT_THROW(parse_offload_compute(bad), std::invalid_argument) << bad;
}

TEST(Config, EnvironmentVariablesOverrideTheFileAndFlagsThem) {
  test::TempDir dir;
  const std::string file = dir.file("c.toml");
  test::write_file(file,
                   "[model]\npath = \"/m\"\n[runtime]\nmax_batch = 2\nmax_seq_len = 64\n[server]\napi_key = \"f\"\n");
  ::setenv("CASCADE_RUNTIME_MAX_BATCH", "6", 1);
  ::setenv("CASCADE_SERVER_API_KEY", "from-env", 1);
  ::setenv("CASCADE_FAULT", "not-config", 1);
  Config c = resolve_config(file, "", {"runtime.max_seq_len=128"});
  EXPECT_EQ(c.runtime.max_batch, 6);
  EXPECT_EQ(c.server.api_key, "from-env");
  EXPECT_EQ(c.runtime.max_seq_len, 128);
  c = resolve_config(file, "", {"runtime.max_batch=3"});
  EXPECT_EQ(c.runtime.max_batch, 3);
  c = resolve_config("", "/some/model", {});
  EXPECT_EQ(c.model.path, "/some/model");
  EXPECT_EQ(c.runtime.max_batch, 6);
  ::setenv("CASCADE_SERVER_APIKEY", "x", 1);
  try {
    resolve_config(file, "", {});
    ADD_FAILURE() << "a misspelt variable was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("CASCADE_SERVER_APIKEY: [server] has no key 'apikey'"), std::string::npos)
        << e.what();
  }
  for (const char* v :
       {"CASCADE_RUNTIME_MAX_BATCH", "CASCADE_SERVER_API_KEY", "CASCADE_FAULT", "CASCADE_SERVER_APIKEY"})
    ::unsetenv(v);
  EXPECT_THROW(resolve_config("", "", {}), ConfigError);
}

}  // namespace
}  // namespace cascade::config
