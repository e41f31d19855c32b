#include "config/toml_guard.h"

#include <gtest/gtest.h>

#include "config/config.h"
#include "tests/test_util.h"

namespace cascade::config {
namespace {

// The parse error's description, or "" where the text parses.
std::string parse_error_of(const std::string& text) {
  try {
    parse_toml(text, "t.toml");
  } catch (const toml::parse_error& e) {
    return std::string(e.description());
  }
  return "";
}

TEST(TomlGuard, NamesTheCodePointsTomlppHasNoAnswerFor) {
  // The ends of each range (toml++ issue #295's table), and their neighbours.
  for (char32_t c : {0xA1, 0xE9, 0x499, 0x2C5E, 0x2FFF, 0x3001, 0x3057, 0xFB26, 0xFEF7, 0xFEFE})
    EXPECT_TRUE(trips_toml_whitespace_test(c)) << std::hex << static_cast<unsigned>(c);
  for (char32_t c : {0x41, 0xA0, 0x49A, 0x1680, 0x2000, 0x2C5D, 0x3000, 0x3058, 0xFB25, 0xFEFF, 0x1F600})
    EXPECT_FALSE(trips_toml_whitespace_test(c)) << std::hex << static_cast<unsigned>(c);
}

TEST(TomlGuard, ReadsTheCharactersTomlppTestsAsWhitespace) {
  // toml++ issue #190: the first character after a line-ending backslash's whitespace.
  toml::table t = parse_toml("s = \"\"\"\\\n   \u00a7\u0416\"\"\"\nu = \"\"\"\\\n\ufef7\"\"\"\n", "t.toml");
  EXPECT_EQ(t["s"].value_or(std::string()), "\u00a7\u0416");
  EXPECT_EQ(t["u"].value_or(std::string()), "\ufef7");
  // Outside strings and in a bare value's look-ahead: an error, not undefined behaviour.
  for (const std::string bad : {"\u00e9 = 1", "a = 1\u3001", "v = 0\"\u00e9\"", "v = 3[x=\"a\u0416\"", "[a.\u00a7]"}) {
    const std::string why = parse_error_of(bad);
    EXPECT_NE(why, "") << bad;
    EXPECT_EQ(why.find("\xf3"), std::string::npos) << "a stand-in in the message: " << why;  // U+F0000.. lead byte
  }
}

TEST(TomlGuard, GivesKeysStringsAndArraysTheirCharactersBack) {
  toml::table t = parse_toml(
      "[\"caf\u00e9\"]\npath = '/data/\u041c\u043e\u0434\u0435\u043b\u044c'\nlist = [\"\u00e9\", ['\u00a7']]\n"
      "inline = { \"k\u00e9\" = \"v\u00e9\" }\nplain = \"\u4e2d\U0001f600\"\n",
      "t.toml");
  const toml::table* cafe = t["caf\u00e9"].as_table();
  ASSERT_NE(cafe, nullptr);
  EXPECT_EQ((*cafe)["path"].value_or(std::string()), "/data/\u041c\u043e\u0434\u0435\u043b\u044c");
  EXPECT_EQ((*cafe)["list"][0].value_or(std::string()), "\u00e9");
  EXPECT_EQ((*cafe)["list"][1][0].value_or(std::string()), "\u00a7");
  EXPECT_EQ((*cafe)["inline"]["k\u00e9"].value_or(std::string()), "v\u00e9");
  EXPECT_EQ((*cafe)["plain"].value_or(std::string()), "\u4e2d\U0001f600");  // outside the ranges: untouched
  // A value moved under its restored key keeps its line (config errors name it), and so
  // does a table whose keys were restored.
  EXPECT_EQ((*cafe)["path"].node()->source().begin.line, 2u);
  EXPECT_EQ((*cafe)["inline"].node()->source().begin.line, 4u);
  EXPECT_TRUE((*cafe)["inline"].as_table()->is_inline());
}

TEST(TomlGuard, RefusesTheStandInsOwnCodePoints) {
  const std::string why = parse_error_of("a = 1\nb = \"\U000F00E9\"\n");
  EXPECT_NE(why.find("U+F00E9"), std::string::npos) << why;
  EXPECT_EQ(parse_error_of("b = \"\U000F00A0\U000FFEFF\"\n"), "");  // just outside the range
}

TEST(TomlGuard, LeavesBytesThatAreNotUtf8ToToml) {
  for (const std::string bad : {"a = \"\xff\"", "a = \"\xc3\"", "a = \"\xe0\x83\xa9\"", "a = \"\xed\xa0\x80\""})
    EXPECT_NE(parse_error_of(bad), "") << bad;
}

TEST(TomlGuard, ParseConfigReadsNonAsciiTextAnywhereTomlAllowsIt) {
  const Config c = parse_config(
      "[model]\npath = \"\"\"\\\n  /data/caf\u00e9\"\"\"\n[placement]\n"
      "device_map = { \"model.\u00e9\" = \"cpu\" }\n[quantization]\nskip_modules = [\"\u0416\"]\n",
      "cfg.toml", "/base");
  EXPECT_EQ(c.model.path, "/data/caf\u00e9");
  ASSERT_EQ(c.placement.device_map.size(), 1u);
  EXPECT_EQ(c.placement.device_map[0].first, "model.\u00e9");
  EXPECT_EQ(c.quantization.skip_modules, std::vector<std::string>{"\u0416"});
  EXPECT_THROW_WITH(parse_config("[model]\npath = \"m\"\n\u00e9 = 1\n", "cfg.toml", "/base"), ConfigError,
                    "cfg.toml:3:");
  // An override's value that is not TOML is a bare string, with its characters.
  const Config o = parse_config("[model]\npath = \"m\"\n", "cfg.toml", "/base", {"model.path=/d/caf\u00e9\""});
  EXPECT_EQ(o.model.path, "/d/caf\u00e9\"");
}

}  // namespace
}  // namespace cascade::config
