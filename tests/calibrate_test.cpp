// cascade calibrate: rates measured here, saved, read back into a plan request; a file
// that is not a rates file is an error naming it.
#include "daemon/calibrate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "stage/weights/weight_stream.h"
#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

TEST(Calibrate, MeasuresSavesAndLoadsTheRates) {
  test::TempDir dir;
  CalibrateOptions o;
  o.threads = 1;
  o.pool_mib = 64;
  o.out = dir.file("sub/rates.json");
  std::ostringstream log;
  run_calibrate(o, log);
  EXPECT_NE(log.str().find("saved to " + o.out), std::string::npos) << log.str();
  const std::optional<Rates> r = load_rates(o.out);
  ASSERT_TRUE(r.has_value());
  std::printf("[ calibrate ] 1 thread: %.1f GB/s bf16 and %.1f GB/s int8 at 1 token, %.1f GFLOP/s at 16 tokens\n",
              r->cpu_compute / 1e9, r->cpu_compute_int8 / 1e9, r->cpu_flops / 1e9);
  EXPECT_GT(r->cpu_compute, 1e8);  // any CPU of this century reads 100 MB/s
  EXPECT_GT(r->cpu_compute_int8, 1e8);
  EXPECT_GT(r->cpu_flops, 1e8);
  EXPECT_GT(r->host_read, 1e8);
  std::printf("[ calibrate ] page cache read by %d readers: %.1f GB/s\n", r->readers, r->disk_read / 1e9);
  EXPECT_GT(r->disk_read, 1e8);
  EXPECT_EQ(r->readers, stage::WeightStream::reader_threads());
  EXPECT_EQ(r->threads, 1);
  EXPECT_FALSE(r->measured.empty());

  planner::PlanRequest req;
  const double pcie = req.pinned_h2d;
  apply_rates(*r, req);
  EXPECT_EQ(req.cpu_compute, r->cpu_compute);
  EXPECT_EQ(req.cpu_flops, r->cpu_flops);
  EXPECT_EQ(req.cpu_compute_int8, r->cpu_compute_int8);
  EXPECT_EQ(req.host_read, r->host_read);
  if (r->pinned_h2d == 0) {
    EXPECT_EQ(req.pinned_h2d, pcie);      // no GPU: the default stays
    EXPECT_EQ(r->cpu_compute_shared, 0);  // and nothing shares the bus with the CPU
    EXPECT_EQ(req.cpu_compute_shared, 0);
    EXPECT_EQ(r->cpu_flops_shared, 0);
    EXPECT_EQ(req.cpu_flops_shared, 0);
  } else {
    EXPECT_EQ(req.pinned_h2d, r->pinned_h2d);
    std::printf("[ calibrate ] bf16 at 1 token beside pinned copies: %.1f GB/s\n", r->cpu_compute_shared / 1e9);
    std::printf("[ calibrate ] 16 tokens beside pinned copies: %.1f GFLOP/s\n", r->cpu_flops_shared / 1e9);
    EXPECT_GT(r->cpu_compute_shared, 1e8);
    EXPECT_EQ(req.cpu_compute_shared, r->cpu_compute_shared);
    EXPECT_GT(r->cpu_flops_shared, 1e8);
    EXPECT_EQ(req.cpu_flops_shared, r->cpu_flops_shared);
  }
  EXPECT_EQ(req.disk_read, r->disk_read);
  // The file it read is gone: only the rates file is left.
  size_t files = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path()))
    if (e.is_regular_file()) ++files;
  EXPECT_EQ(files, 1u);
}

// Planning measures the rates itself, once, where a hybrid split needs them and a GPU
// exists; otherwise it keeps the defaults and says so.
TEST(Calibrate, PlanningMeasuresOnceWhereASplitNeedsTheRates) {
  test::TempDir dir;
  CalibrateOptions how;
  how.threads = 1;
  how.pool_mib = 32;
  how.out = dir.file("rates.json");
  planner::PlanRequest req;
  req.budgets = {{config::parse_device("cuda:0"), uint64_t{1} << 30}, {config::parse_device("cpu"), std::nullopt}};
  std::ostringstream log;
  req.offload_compute = "cpu";  // no split to make
  EXPECT_NE(plan_run_rates(req, true, log, how).find("defaults"), std::string::npos);
  req.offload_compute = "auto";  // a split, but no GPU on this machine
  EXPECT_NE(plan_run_rates(req, false, log, how).find("defaults"), std::string::npos);
  EXPECT_FALSE(load_rates(how.out).has_value());
  EXPECT_TRUE(log.str().empty()) << log.str();

  const double default_cpu = req.cpu_compute;
  const std::string now = plan_run_rates(req, true, log, how);  // measures and saves
  EXPECT_NE(now.find("measured now"), std::string::npos) << now;
  EXPECT_NE(log.str().find("measuring this machine's CPU and PCIe rates"), std::string::npos) << log.str();
  const std::optional<Rates> saved = load_rates(how.out);
  ASSERT_TRUE(saved.has_value());
  EXPECT_EQ(req.cpu_compute, saved->cpu_compute);
  EXPECT_NE(req.cpu_compute, default_cpu);

  planner::PlanRequest again;  // the next plan reads the file, whatever it plans
  std::ostringstream quiet;
  const std::string read = plan_run_rates(again, false, quiet, how);
  EXPECT_NE(read.find("measured " + saved->measured), std::string::npos) << read;
  EXPECT_TRUE(quiet.str().empty()) << quiet.str();
  EXPECT_EQ(again.cpu_compute, saved->cpu_compute);
}

TEST(Calibrate, AMissingFileIsNoneAndABadOneIsNamed) {
  test::TempDir dir;
  EXPECT_FALSE(load_rates(dir.file("absent.json")).has_value());
  test::write_file(dir.file("bad.json"), "{\"cpu_compute\": 1}");
  EXPECT_THROW_WITH(load_rates(dir.file("bad.json")), std::runtime_error, dir.file("bad.json"), "cascade calibrate");
  test::write_file(dir.file("neg.json"),
                   R"({"cpu_compute": -1, "cpu_flops": 1, "pinned_h2d": 0, "threads": 1, "measured": "x"})");
  EXPECT_THROW_WITH(load_rates(dir.file("neg.json")), std::runtime_error, "not positive");
  test::write_file(
      dir.file("neg_disk.json"),
      R"({"cpu_compute": 1, "cpu_flops": 1, "pinned_h2d": 0, "disk_read": -5, "threads": 1, "measured": "x"})");
  EXPECT_THROW_WITH(load_rates(dir.file("neg_disk.json")), std::runtime_error, dir.file("neg_disk.json"),
                    "not positive");
  test::write_file(dir.file("neg_shared.json"),
                   R"({"cpu_compute": 1, "cpu_flops": 1, "pinned_h2d": 1, "cpu_compute_shared": -1, "threads": 1,
                       "measured": "x"})");
  EXPECT_THROW_WITH(load_rates(dir.file("neg_shared.json")), std::runtime_error, "not positive");
  test::write_file(dir.file("neg_flops.json"),
                   R"({"cpu_compute": 1, "cpu_flops": 1, "pinned_h2d": 1, "cpu_flops_shared": -1, "threads": 1,
                       "measured": "x"})");
  EXPECT_THROW_WITH(load_rates(dir.file("neg_flops.json")), std::runtime_error, "not positive");
}

// What a GPU machine's calibrate saves comes back as it was (the rates measured beside
// copies are 0 on this one, so they are set here), and a file from before they were
// measured reads as 0: not measured.
TEST(Calibrate, SavedRatesComeBack) {
  test::TempDir dir;
  Rates r;
  r.cpu_compute = 60e9, r.cpu_compute_int8 = 50e9, r.cpu_flops = 400e9, r.host_read = 90e9, r.disk_read = 30e9;
  r.readers = 15, r.pinned_h2d = 55e9, r.cpu_compute_shared = 45e9, r.cpu_flops_shared = 300e9, r.threads = 15;
  r.measured = "2026-12-07T20:00:00Z";
  save_rates(r, dir.file("rates.json"));
  const std::optional<Rates> back = load_rates(dir.file("rates.json"));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->cpu_compute_shared, 45e9);
  EXPECT_EQ(back->cpu_flops_shared, 300e9);
  EXPECT_EQ(back->pinned_h2d, 55e9);
  EXPECT_EQ(back->measured, r.measured);
  test::write_file(dir.file("old.json"), R"({"cpu_compute": 1, "cpu_flops": 1, "pinned_h2d": 1, "threads": 1,
                                            "measured": "x"})");
  EXPECT_EQ(load_rates(dir.file("old.json"))->cpu_flops_shared, 0);
}

TEST(Calibrate, ThePathFollowsTheEnvironment) {
  ::setenv("CASCADE_RATES", "/tmp/x/rates.json", 1);
  EXPECT_EQ(rates_path(), "/tmp/x/rates.json");
  ::unsetenv("CASCADE_RATES");
  ::setenv("XDG_CACHE_HOME", "/tmp/cache", 1);
  EXPECT_EQ(rates_path(), "/tmp/cache/cascade/rates.json");
  ::unsetenv("XDG_CACHE_HOME");
}

}  // namespace
}  // namespace cascade::daemon
