#include "planner/budgets.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace cascade::planner {
namespace {

constexpr uint64_t GiB = 1ull << 30;

TEST(Budgets, ParseFlag) {
  const auto s = parse_max_memory("cuda:0=2GiB,1=500MB,cpu=8GiB,disk");
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0].device.str(), "cuda:0");
  EXPECT_EQ(*s[0].bytes, 2 * GiB);
  EXPECT_EQ(s[1].device.str(), "cuda:1");
  EXPECT_EQ(*s[1].bytes, 500'000'000u);
  EXPECT_FALSE(s[3].bytes.has_value());
  EXPECT_FALSE(s[3].measure);  // disk without a size is unlimited
  EXPECT_TRUE(parse_max_memory("cpu")[0].measure);
  EXPECT_THROW_WITH(parse_max_memory("cuda:0=12 GiBs"), PlanError, "'cuda:0=12 GiBs'", "invalid size");
  EXPECT_THROW_WITH(parse_max_memory("gpu=1GiB"), PlanError, "invalid device 'gpu'");
  EXPECT_THROW_WITH(parse_max_memory("cpu=1GiB,cpu:0=2GiB"), PlanError, "cpu:0 twice");
  EXPECT_THROW_WITH(parse_max_memory(""), PlanError, "empty");
}

TEST(Budgets, MeasuredDevicesLeaveAReserve) {
  HostMemory h;
  h.gpu_free = {10 * GiB, 4 * GiB};
  h.mem_available = 20 * GiB;
  const auto b = resolve_budgets({}, h);  // nothing given: every GPU, the CPU, disk
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(*b[0].bytes, 9 * GiB);
  EXPECT_EQ(*b[1].bytes, 3 * GiB);
  EXPECT_EQ(*b[2].bytes, 18 * GiB);  // 10% kept back
  EXPECT_EQ(b[3].device.str(), "disk");
  EXPECT_FALSE(b[3].bytes.has_value());
  // Two measured CPU devices share the RAM; given sizes are kept as given.
  const auto c = resolve_budgets(parse_max_memory("cpu:0,cpu:1,cuda:1=1GiB"), h);
  EXPECT_EQ(*c[0].bytes, 9 * GiB);
  EXPECT_EQ(*c[1].bytes, 9 * GiB);
  EXPECT_EQ(*c[2].bytes, 1 * GiB);
}

TEST(Budgets, AGpuThisMachineLacksNeedsASize) {
  HostMemory h;
  h.mem_available = 8 * GiB;
  EXPECT_THROW_WITH(resolve_budgets(parse_max_memory("cuda:0,cpu"), h), PlanError, "cuda:0 has no size", "0 GPU(s)",
                    "cuda:0=20GiB");
  EXPECT_EQ(*resolve_budgets(parse_max_memory("cuda:0=20GiB,cpu"), h)[0].bytes, 20 * GiB);  // planning ahead
}

TEST(Budgets, ProbeReadsProcMeminfo) { EXPECT_GT(probe_host_memory().mem_available, 0u); }

}  // namespace
}  // namespace cascade::planner
