// comm/cores.h against the real affinity calls of this process.
#include "comm/cores.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <thread>

namespace cascade::comm {
namespace {

TEST(Cores, ListsRanges) {
  EXPECT_EQ(core_list({}), "");
  EXPECT_EQ(core_list({3}), "3");
  EXPECT_EQ(core_list({0, 1, 2, 3}), "0-3");
  EXPECT_EQ(core_list({0, 2, 3, 4, 7, 9, 10}), "0,2-4,7,9-10");
}

TEST(Cores, AllowedIsThisProcessMask) {
  const std::vector<int> all = allowed_cores();
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(::sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_EQ(static_cast<int>(all.size()), CPU_COUNT(&set));
  for (size_t i = 1; i < all.size(); ++i) EXPECT_LT(all[i - 1], all[i]);
}

// Pins a thread of its own, so the test process keeps its mask.
TEST(Cores, PinsToACoreAndBack) {
  const std::vector<int> all = allowed_cores();
  ASSERT_FALSE(all.empty());
  std::thread([&] {
    EXPECT_EQ(pin_to({all.back()}), "");
    EXPECT_EQ(allowed_cores(), std::vector<int>{all.back()});
    EXPECT_EQ(pin_to({}), "");  // nothing asked: unchanged
    EXPECT_EQ(allowed_cores(), std::vector<int>{all.back()});
    EXPECT_EQ(pin_to(all), "");
    EXPECT_EQ(allowed_cores(), all);
  }).join();
}

// A core this host lacks: the error names it and the mask stays as it was.
TEST(Cores, FailsClearlyAndKeepsTheMask) {
  const std::vector<int> all = allowed_cores();
  std::thread([&] {
    const int absent = CPU_SETSIZE - 1;
    if (std::find(all.begin(), all.end(), absent) != all.end()) GTEST_SKIP() << "this host has core " << absent;
    const std::string why = pin_to({absent});
    EXPECT_NE(why.find("cores " + std::to_string(absent)), std::string::npos) << why;
    EXPECT_NE(why.find("this host allows " + core_list(all)), std::string::npos) << why;
    EXPECT_EQ(allowed_cores(), all);
    const std::string outside = pin_to({0, CPU_SETSIZE});
    EXPECT_NE(outside.find("outside this host's CPU set"), std::string::npos) << outside;
    EXPECT_EQ(allowed_cores(), all);
  }).join();
}

}  // namespace
}  // namespace cascade::comm
