// The Precompiled normalizer on a hand-built charsmap (the trained nmt_nfkc one is
// checked against HF in tokenizer_test): the double-array walk, HF's grapheme rules,
// and charsmaps that lie about their own layout.
#include <gtest/gtest.h>

#include <boost/beast/core/detail/base64.hpp>

#include "daemon/tokenizer/tokenizer_parts.h"
#include "tests/test_util.h"

namespace cascade::daemon::tok {
namespace {

// darts-clone units: a node with a child offset (< 2^21 here), a label and a leaf flag.
uint32_t node(uint32_t offset, uint32_t label, bool leaf) { return offset << 10 | (leaf ? 1u << 8 : 0) | label; }

// A trie mapping "A" -> "a" and "é" (C3 A9) -> "e"; replacements "a\0e\0".
std::vector<uint32_t> small_trie() {
  std::vector<uint32_t> u(0x1C3, 0);
  u[0] = node(1, 0, false);            // root: children at 1 ^ byte
  u[0x40] = node(1, 0x41, true);       // 'A', leaf; its value at 0x40 ^ 1
  u[0x41] = 0;                         // -> "a"
  u[0xC2] = node(0x100, 0xC3, false);  // first byte of é; children at 0xC2 ^ 0x100 ^ byte
  u[0x16B] = node(1, 0xA9, true);      // second byte of é, leaf; value at 0x16A
  u[0x16A] = 2;                        // -> "e"
  return u;
}

nlohmann::json precompiled(const std::vector<uint32_t>& units, const std::string& replacements,
                           int64_t trie_bytes = -1) {
  std::string raw(4, '\0');
  const uint32_t n = trie_bytes < 0 ? static_cast<uint32_t>(units.size() * 4) : static_cast<uint32_t>(trie_bytes);
  for (int i = 0; i < 4; ++i) raw[i] = static_cast<char>(n >> (8 * i));
  for (uint32_t v : units)
    for (int i = 0; i < 4; ++i) raw += static_cast<char>(v >> (8 * i));
  raw += replacements;
  std::string b64(boost::beast::detail::base64::encoded_size(raw.size()), '\0');
  b64.resize(boost::beast::detail::base64::encode(b64.data(), raw.data(), raw.size()));
  return {{"type", "Precompiled"}, {"precompiled_charsmap", b64}};
}

std::string normalize(const Normalizer& n, const std::string& s) {
  Piece p{s, true};
  n.apply(p);
  return p.text;
}

TEST(Precompiled, MapsWhatTheTrieHoldsAndKeepsTheRest) {
  const auto n = make_normalizer(precompiled(small_trie(), std::string("a\0e\0", 4)));
  EXPECT_EQ(normalize(*n, "A"), "a");
  EXPECT_EQ(normalize(*n, "BAB"), "BaB");
  EXPECT_EQ(normalize(*n, "\xC3\xA9t\xC3\xA9"), "ete");  // a two-byte key
  EXPECT_EQ(normalize(*n, "e\xCC\x81"), "e\xCC\x81");    // decomposed é: neither part is a key
  EXPECT_EQ(normalize(*n, ""), "");
}

TEST(Precompiled, AShortGraphemeTakesItsShortestMappedPrefixWhole) {
  const auto n = make_normalizer(precompiled(small_trie(), std::string("a\0e\0", 4)));
  // "A" + U+0301 is one grapheme of 3 bytes: HF looks it up whole, the trie's first
  // (shortest) prefix match is "A", and the accent goes with it.
  EXPECT_EQ(normalize(*n, "A\xCC\x81"), "a");
  // Seven bytes: too long to look up whole, so character by character.
  EXPECT_EQ(normalize(*n, "A\xCC\x81\xCC\x81\xCC\x81"), "a\xCC\x81\xCC\x81\xCC\x81");
}

TEST(Precompiled, LyingCharsmapsAreErrorsOrNoMapping) {
  const std::string reps("a\0e\0", 4);
  EXPECT_THROW_WITH(make_normalizer({{"type", "Precompiled"}, {"precompiled_charsmap", "!!!!"}}), TokenizerError,
                    "not base64");
  EXPECT_THROW_WITH(make_normalizer({{"type", "Precompiled"}, {"precompiled_charsmap", "AAA="}}), TokenizerError,
                    "shorter than its header");
  // Unpadded, not a multiple of 4 (found by tokenizer_json_fuzz: decoding overran its buffer).
  EXPECT_THROW_WITH(make_normalizer({{"type", "Precompiled"}, {"precompiled_charsmap", "AAAAAA"}}), TokenizerError,
                    "trie size 0");
  EXPECT_THROW_WITH(make_normalizer(precompiled(small_trie(), reps, 1 << 20)), TokenizerError, "trie size 1048576",
                    "does not fit");
  EXPECT_THROW_WITH(make_normalizer(precompiled(small_trie(), reps, 6)), TokenizerError, "trie size 6");
  EXPECT_THROW_WITH(make_normalizer(precompiled(small_trie(), "\xC3(\0", 4)), TokenizerError, "not UTF-8");
  // Values and offsets that point outside the arrays, or into a character: no mapping.
  auto u = small_trie();
  u[0x41] = 99;                         // "A" -> past the replacements
  u[0x16B] = node(0x7FFF, 0xA9, true);  // é's value far outside the trie
  EXPECT_EQ(normalize(*make_normalizer(precompiled(u, reps)), "A\xC3\xA9"), "A\xC3\xA9");
  u = small_trie();
  u[0x41] = 1;  // "A" -> the second byte of "é", inside a character
  EXPECT_EQ(normalize(*make_normalizer(precompiled(u, std::string("\xC3\xA9\0", 3))), "A"), "A");
}

}  // namespace
}  // namespace cascade::daemon::tok
