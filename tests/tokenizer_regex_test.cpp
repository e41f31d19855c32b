// tokenizer.json's regexes are Oniguruma's; PCRE2 runs them after onig_to_pcre2. The
// files' own behaviour against Hugging Face is tokenizer_test's (bloom_bytelevel holds
// Bloom's nested class); here the translation itself, and its errors.
#include <gtest/gtest.h>

#include "daemon/tokenizer/tokenizer_parts.h"
#include "tests/test_util.h"

namespace cascade::daemon::tok {
namespace {

std::vector<std::string> matches(const std::string& pattern, const std::string& text) {
  std::vector<std::string> out;
  for (const auto& [b, e] : Regex(pattern).find_all(text)) out.push_back(text.substr(b, e - b));
  return out;
}

TEST(OnigToPcre2, NestedClassesJoinTheirParent) {
  EXPECT_EQ(onig_to_pcre2("[a[bc]d]"), "[abcd]");
  EXPECT_EQ(onig_to_pcre2(R"( ?[^(\s|[.,!?])]+)"), R"( ?[^(\s|.,!?)]+)");
  EXPECT_EQ(onig_to_pcre2("[x[y[z]]]+"), "[xyz]+");
}

TEST(OnigToPcre2, WhatIsAlreadyPcre2StaysAsItIs) {
  for (const std::string p : {R"('s|'t| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))", R"(\Q[a]\E)", "[[:alpha:]_]", "[]a]",
                              R"([\[\]])", "[^]x]", "plain"}) {
    EXPECT_EQ(onig_to_pcre2(p), p);
  }
}

TEST(OnigToPcre2, BloomsPreTokenizerSplitsAsOnigurumaDoes) {
  // A space joins the word after it; parentheses, `|` and the punctuation stay out.
  EXPECT_EQ(matches(R"( ?[^(\s|[.,!?…。，、।۔،])]+)", " Hello, world!(x|y)…z。"),
            (std::vector<std::string>{" Hello", " world", "x", "y", "z"}));
}

TEST(OnigToPcre2, WhatHasNoFlatFormIsNamed) {
  EXPECT_THROW_WITH(onig_to_pcre2("[a[^b]]"), TokenizerError, "[a[^b]]", "negated class inside a class");
  EXPECT_THROW_WITH(onig_to_pcre2("[a-z&&[^aeiou]]"), TokenizerError, "intersection");
  EXPECT_THROW_WITH(onig_to_pcre2("ab[cd"), TokenizerError, "unterminated character class");
  EXPECT_THROW_WITH(onig_to_pcre2(std::string(100000, '[')), TokenizerError, "nested too deep");
  EXPECT_THROW_WITH(Regex("(ab"), TokenizerError, "regex '(ab' does not compile");
}

}  // namespace
}  // namespace cascade::daemon::tok
