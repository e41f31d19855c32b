// config/env.h: the environment switches' parsing.
#include "config/env.h"

#include <gtest/gtest.h>
#include <stdlib.h>

namespace cascade::config {
namespace {

constexpr const char* kName = "CASCADE_ENV_TEST_SWITCH";

TEST(Env, FlagLeavesItsDefaultOnlyOnItsOneValue) {
  ::unsetenv(kName);
  EXPECT_TRUE(env_flag(kName, true));
  EXPECT_FALSE(env_flag(kName, false));
  ::setenv(kName, "0", 1);
  EXPECT_FALSE(env_flag(kName, true));
  EXPECT_FALSE(env_flag(kName, false));
  ::setenv(kName, "1", 1);
  EXPECT_TRUE(env_flag(kName, true));
  EXPECT_TRUE(env_flag(kName, false));
  ::setenv(kName, "yes", 1);  // neither "0" nor "1": the default stands
  EXPECT_TRUE(env_flag(kName, true));
  EXPECT_FALSE(env_flag(kName, false));
  ::unsetenv(kName);
}

TEST(Env, IntIsUnsetOrTheLeadingNumber) {
  ::unsetenv(kName);
  EXPECT_FALSE(env_int(kName).has_value());
  ::setenv(kName, "12", 1);
  EXPECT_EQ(env_int(kName), 12);
  ::setenv(kName, "7x", 1);
  EXPECT_EQ(env_int(kName), 7);
  ::setenv(kName, "off", 1);
  EXPECT_EQ(env_int(kName), 0);
  ::unsetenv(kName);
}

}  // namespace
}  // namespace cascade::config
