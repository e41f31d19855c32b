#include "config/size.h"

#include <gtest/gtest.h>

namespace cascade::config {
namespace {

TEST(ParseSize, BinaryAndDecimalUnits) {
  EXPECT_EQ(*parse_size("2GiB"), 2ull << 30);
  EXPECT_EQ(*parse_size("2gib"), 2ull << 30);
  EXPECT_EQ(*parse_size("500MB"), 500'000'000ull);
  EXPECT_EQ(*parse_size("1.5GB"), 1'500'000'000ull);
  EXPECT_EQ(*parse_size("4096"), 4096ull);
  EXPECT_EQ(*parse_size("64 KiB"), 65536ull);
  EXPECT_EQ(*parse_size("1TiB"), 1ull << 40);
}

TEST(ParseSize, Unlimited) {
  EXPECT_FALSE(parse_size("unlimited").has_value());
  EXPECT_FALSE(parse_size("Unlimited").has_value());
}

TEST(ParseSize, RejectsGarbageWithTheText) {
  for (const char* bad : {"12 GiBs", "", "GiB", "1.2.3GB", "-5GB", "ten", "5 GB extra", "1e400GB"}) {
    try {
      parse_size(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(FormatBytes, Readable) {
  EXPECT_EQ(format_bytes(12), "12 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(3ull << 30), "3.00 GiB");
}

}  // namespace
}  // namespace cascade::config
