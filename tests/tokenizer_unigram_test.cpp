// The Unigram model on small hand-written vocabularies, where the best segmentation
// can be worked out by hand; parity with HF on trained ones is in tokenizer_test.
#include <gtest/gtest.h>

#include "daemon/tokenizer/tokenizer.h"
#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

using J = nlohmann::json;

// A tokenizer.json with only a Unigram model: no normalizer, no pre-tokenizer.
J unigram(const J& vocab, const J& unk_id = 0, bool byte_fallback = false) {
  return {{"model", {{"type", "Unigram"}, {"vocab", vocab}, {"unk_id", unk_id}, {"byte_fallback", byte_fallback}}}};
}

std::shared_ptr<const Tokenizer> load(const test::TempDir& d, const J& j) {
  test::write_file(d.file("tokenizer.json"), j.dump());
  return Tokenizer::load(d.path());
}

TEST(Unigram, TheMostProbableSegmentationWins) {
  test::TempDir d;
  // "abc": a|b|c = -3, ab|c = -2.5, a|bc = -1.5 (best), abc is absent.
  auto tok =
      load(d, unigram(J::array({{"<unk>", 0.0}, {"a", -1.0}, {"b", -1.0}, {"c", -1.0}, {"ab", -1.5}, {"bc", -0.5}})));
  EXPECT_EQ(tok->encode("abc", false), (std::vector<int64_t>{1, 5}));
  // A longer piece wins only when it scores better than its parts.
  tok = load(d, unigram(J::array({{"<unk>", 0.0}, {"a", -1.0}, {"b", -1.0}, {"ab", -2.5}})));
  EXPECT_EQ(tok->encode("ab", false), (std::vector<int64_t>{1, 2}));
  tok = load(d, unigram(J::array({{"<unk>", 0.0}, {"a", -1.0}, {"b", -1.0}, {"ab", -1.5}})));
  EXPECT_EQ(tok->encode("ab", false), (std::vector<int64_t>{3}));
  EXPECT_EQ(tok->decode({3, 1}, false), "ab a");  // no decoder: tokens joined by spaces, as HF does
}

TEST(Unigram, UnknownCharactersFuseIntoOneUnk) {
  test::TempDir d;
  auto tok = load(d, unigram(J::array({{"x", -1.0}, {"<unk>", 0.0}}), 1));
  // "ü" and "€" have no piece: one <unk> for the run, pieces around it kept.
  EXPECT_EQ(tok->encode("x\xC3\xBC\xE2\x82\xAC"
                        "x",
                        false),
            (std::vector<int64_t>{0, 1, 0}));
}

TEST(Unigram, ByteFallbackSpellsUnknownsAsBytes) {
  test::TempDir d;
  J vocab = J::array({{"<unk>", 0.0}, {"x", -1.0}});
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab.push_back({name, -5.0});
  }
  auto tok = load(d, unigram(vocab, 0, true));
  // "ü" = C3 BC: two byte tokens (ids 2 + byte value).
  EXPECT_EQ(tok->encode("x\xC3\xBC", false), (std::vector<int64_t>{1, 2 + 0xC3, 2 + 0xBC}));
  vocab.erase(2 + 0xBC);  // <0xBC> gone: a piece with a byte lacking its token is <unk>
  tok = load(d, unigram(vocab, 0, true));
  EXPECT_EQ(tok->encode("x\xC3\xBC", false), (std::vector<int64_t>{1, 0}));
}

TEST(Unigram, BadModelsNameTheProblem) {
  test::TempDir d;
  EXPECT_THROW_WITH(load(d, unigram(J::array({{"a", -1.0}}), nullptr)), TokenizerError, "without unk_id");
  EXPECT_THROW_WITH(load(d, unigram(J::array({{"a", -1.0}}), 7)), TokenizerError, "unk_id 7", "not in the vocabulary");
  EXPECT_THROW_WITH(load(d, unigram(J::array({{"a", -1.0}}), 0.5)), TokenizerError, "unk_id must be an integer");
  EXPECT_THROW_WITH(load(d, unigram(J::array({{"a", "high"}}))), TokenizerError, "[\"a\",\"high\"]",
                    "not [piece, score]");
  EXPECT_THROW_WITH(load(d, unigram(J::array({"a"}))), TokenizerError, "not [piece, score]");
  EXPECT_THROW_WITH(load(d, unigram(J::array())), TokenizerError, "vocab is empty");
  EXPECT_THROW_WITH(load(d, unigram(J::object())), TokenizerError, "list of [piece, score]");
}

}  // namespace
}  // namespace cascade::daemon
