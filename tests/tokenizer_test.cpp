// Parity with Hugging Face `tokenizers` (fixtures from scripts/make_tokenizer_fixtures.py):
// identical ids with and without special tokens, identical decoded text with and
// without skip_special_tokens, for every tokenizer and every string.
#include "daemon/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

std::string dir() { return test::fixture("tokenizers"); }

const nlohmann::json& cases() {
  static const nlohmann::json c = test::read_json(dir() + "/cases.json");
  return c;
}

std::vector<std::string> names() {
  std::vector<std::string> n;
  for (auto it = cases()["results"].begin(); it != cases()["results"].end(); ++it) n.push_back(it.key());
  return n;
}

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, EveryStringMatchesHuggingFaceBothWays) {
  auto tok = Tokenizer::load(dir() + "/" + GetParam());
  const auto& strings = cases()["strings"];
  const auto& rows = cases()["results"][GetParam()];
  ASSERT_GE(strings.size(), 40u);
  size_t ids_checked = 0;
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string s = strings[i];
    const auto& r = rows[i];
    const auto want = r["ids"].get<std::vector<int64_t>>();
    const auto want_special = r["ids_special"].get<std::vector<int64_t>>();
    EXPECT_EQ(tok->encode(s, false), want) << "string " << i << ": " << nlohmann::json(s).dump();
    EXPECT_EQ(tok->encode(s, true), want_special) << "string " << i << ": " << nlohmann::json(s).dump();
    EXPECT_EQ(tok->decode(want_special, false), r["decoded"].get<std::string>()) << "string " << i;
    EXPECT_EQ(tok->decode(want_special, true), r["decoded_skip"].get<std::string>()) << "string " << i;
    ids_checked += want.size();
  }
  EXPECT_GT(ids_checked, 400u);  // the comparison is not vacuous
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerParity, ::testing::ValuesIn(names()),
                         [](const auto& info) { return info.param; });

bool valid_utf8_without_replacement(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    if (s.compare(i, 3, "\xEF\xBF\xBD") == 0) return false;
    i += n;
  }
  return true;
}

// Feeds tokens one at a time through text full of multi-byte characters: every piece
// is whole UTF-8, and the pieces add up to the full decode.
void check_streaming(const std::string& name, const std::string& text, bool expect_held) {
  auto tok = Tokenizer::load(dir() + "/" + name);
  const auto ids = tok->encode(text, true);
  for (bool skip : {false, true}) {
    StreamDecoder s(tok, skip);
    std::string all;
    int held = 0;
    for (int64_t id : ids) {
      const std::string piece = s.push(id);
      EXPECT_TRUE(valid_utf8_without_replacement(piece)) << name << ": half a character emitted: " << piece;
      held += piece.empty();
      all += piece;
    }
    all += s.flush();
    EXPECT_EQ(all, tok->decode(ids, skip)) << name;
    if (expect_held) {
      EXPECT_GT(held, 0) << name << ": no token was held, so nothing multi-byte was split";
    }
  }
}

TEST(StreamDecoder, ByteLevelNeverSplitsACharacter) {
  check_streaming("gpt2_bytelevel", "emoji 🎉🦄 日本語 naïve e\u0301 👨‍👩‍👧 ꙮ 𓀀 done", true);
  check_streaming("llama3_split", "<|begin_of_text|>한국어 텍스트 🎉 and 中文文本测试", true);
}

TEST(StreamDecoder, ByteFallbackPiecesAreJoinedBeforeShown) {
  auto tok = Tokenizer::load(dir() + "/llama2_bytefallback");
  // These glyphs are outside the trained alphabet, so they become <0x..> byte tokens.
  const auto ids = tok->encode("ꙮ 𓀀 ᚠᛇᚻ", false);
  int bytes = 0;
  for (int64_t id : ids) bytes += tok->decode({id}, false) == "\xEF\xBF\xBD";
  EXPECT_GT(bytes, 4) << "expected byte-fallback tokens";
  check_streaming("llama2_bytefallback", "ꙮ 𓀀 ᚠᛇᚻ and 日本語 with 🎉", true);
}

TEST(StreamDecoder, MetaspaceKeepsSpacesBetweenWords) {
  check_streaming("metaspace_added", "hello there [MASK] general kenobi 123 ﬁnancial", false);
}

TEST(StreamDecoder, AnIncompleteTailIsFlushedAsReplacement) {
  auto tok = Tokenizer::load(dir() + "/gpt2_bytelevel");
  const auto ids = tok->encode("🎉", false);
  ASSERT_GT(ids.size(), 1u);  // the emoji's 4 bytes span several tokens
  StreamDecoder s(tok, false);
  EXPECT_EQ(s.push(ids[0]), "");
  EXPECT_EQ(s.flush(), "\xEF\xBF\xBD");  // what decode() of the cut-off ids also gives
}

// Anything the loader does not implement fails with its name, never silently.
void expect_unsupported(const std::string& key, const nlohmann::json& value, const std::string& word) {
  test::TempDir d;
  auto j = test::read_json(dir() + "/metaspace_added/tokenizer.json");
  j[key] = value;
  test::write_file(d.file("tokenizer.json"), j.dump());
  EXPECT_THROW_WITH(Tokenizer::load(d.path()), TokenizerError, word, "not supported");
}

TEST(TokenizerLoad, UnsupportedComponentsFailLoudly) {
  expect_unsupported("normalizer", {{"type", "BertNormalizer"}}, "normalizer 'BertNormalizer'");
  expect_unsupported("pre_tokenizer", {{"type", "Punctuation"}}, "pre-tokenizer 'Punctuation'");
  expect_unsupported("decoder", {{"type", "WordPiece"}}, "decoder 'WordPiece'");
  expect_unsupported("post_processor", {{"type", "RobertaProcessing"}}, "post-processor 'RobertaProcessing'");
  expect_unsupported("model", {{"type", "WordPiece"}, {"vocab", nlohmann::json::object()}}, "model 'WordPiece'");
}

TEST(TokenizerLoad, BadFilesNameTheProblem) {
  test::TempDir d;
  EXPECT_THROW_WITH(Tokenizer::load(d.path()), TokenizerError, "tokenizer.json", "cannot open");
  test::write_file(d.file("tokenizer.json"), "{nope");
  EXPECT_THROW_WITH(Tokenizer::load(d.path()), TokenizerError, "not valid JSON");
  auto j = test::read_json(dir() + "/split_isolated/tokenizer.json");
  j["pre_tokenizer"]["pattern"] = {{"Regex", "(unclosed"}};
  test::write_file(d.file("tokenizer.json"), j.dump());
  EXPECT_THROW_WITH(Tokenizer::load(d.path()), TokenizerError, "regex '(unclosed'", "does not compile");
  j = test::read_json(dir() + "/split_isolated/tokenizer.json");
  j["model"]["merges"][0] = "s e x";
  test::write_file(d.file("tokenizer.json"), j.dump());
  EXPECT_THROW_WITH(Tokenizer::load(d.path()), TokenizerError, "merge 's e x'");
}

// Found by tokenizer_json_fuzz: a missing key was read with const operator[] (undefined
// behaviour, a heap overflow under ASan); ids outside any vocabulary sized the id table.
TEST(TokenizerLoad, MissingKeysAndWildIdsAreErrors) {
  test::TempDir d;
  auto load_edited = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = test::read_json(dir() + "/split_isolated/tokenizer.json");
    edit(j);
    test::write_file(d.file("tokenizer.json"), j.dump());
    return Tokenizer::load(d.path());
  };
  EXPECT_THROW_WITH(load_edited([](auto& j) { j["model"].erase("merges"); }), TokenizerError, "merges");
  EXPECT_THROW_WITH(load_edited([](auto& j) { j["model"].erase("vocab"); }), TokenizerError, "vocab");
  EXPECT_THROW_WITH(load_edited([](auto& j) { j["model"]["vocab"]["zzz"] = -3; }), TokenizerError, "vocab id -3");
  EXPECT_THROW_WITH(load_edited([](auto& j) { j["model"]["vocab"]["zzz"] = int64_t{1} << 40; }), TokenizerError,
                    "out of range");
  EXPECT_THROW_WITH(load_edited([](auto& j) { j["model"]["vocab"]["zzz"] = 2e73; }), TokenizerError,
                    "vocab id must be an integer");
  EXPECT_THROW_WITH(load_edited([](auto& j) { j["added_tokens"] = {{{"content", "x"}}}; }), TokenizerError, "id");
  EXPECT_THROW_WITH(load_edited([](auto& j) {
                      j["post_processor"] = {{"type", "TemplateProcessing"},
                                             {"single", {{{"SpecialToken", {{"id", "<x>"}, {"type_id", 0}}}}}},
                                             {"special_tokens", nlohmann::json::object()}};
                    }),
                    TokenizerError, "'<x>', not in special_tokens");
}

TEST(Tokenizer, MergesInEitherSpelling) {
  // The same tokenizer with merges written "a b" instead of ["a", "b"] encodes the same.
  test::TempDir d;
  auto j = test::read_json(dir() + "/nfc_whitespace/tokenizer.json");
  for (auto& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  test::write_file(d.file("tokenizer.json"), j.dump());
  auto a = Tokenizer::load(d.path()), b = Tokenizer::load(dir() + "/nfc_whitespace");
  for (const auto& s : cases()["strings"]) EXPECT_EQ(a->encode(s, true), b->encode(s, true));
}

}  // namespace
}  // namespace cascade::daemon

namespace cascade::daemon {
namespace {

// A byte-level tokenizer cut down to ids < 256, so it fits the fixture models' vocab.
std::string model_with_tokenizer(const test::TempDir& d) {
  std::filesystem::copy(test::fixture("llama_gqa"), d.file("m"), std::filesystem::copy_options::recursive);
  auto j = test::read_json(dir() + "/gpt2_bytelevel/tokenizer.json");
  nlohmann::json vocab = nlohmann::json::object();
  for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it)
    if (it.value().get<int64_t>() < 256) vocab[it.key()] = it.value();
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string a = m[0], b = m[1];
    if (vocab.contains(a) && vocab.contains(b) && vocab.contains(a + b)) merges.push_back(m);
  }
  j["model"]["vocab"] = vocab;
  j["model"]["merges"] = merges;
  test::write_file(d.file("m/tokenizer.json"), j.dump());
  return d.file("m");
}

std::string run_cli(const std::string& args) { return test::run_cascade(args).out; }

TEST(GenerateWithText, PromptTextEqualsItsIdsAndOutputIsDecoded) {
  test::TempDir d;
  const std::string m = model_with_tokenizer(d);
  auto tok = Tokenizer::load(m);
  const std::string prompt = "def f(x): return x";
  const auto ids = tok->encode(prompt, true);
  std::string list;
  for (int64_t id : ids) list += (list.empty() ? "" : ",") + std::to_string(id);
  const auto by_text =
      nlohmann::json::parse(run_cli("generate --model " + m + " --prompt '" + prompt + "' --max-new-tokens 8 --json"));
  const auto by_ids =
      nlohmann::json::parse(run_cli("generate --model " + m + " --prompt-ids " + list + " --max-new-tokens 8 --json"));
  EXPECT_EQ(by_text["prompt_ids"].get<std::vector<int64_t>>(), ids);
  EXPECT_EQ(by_text["output_ids"], by_ids["output_ids"]);
  EXPECT_EQ(by_text["prompt"], prompt);
  EXPECT_EQ(by_text["text"], tok->decode(by_text["output_ids"].get<std::vector<int64_t>>(), true));
  // Without a tokenizer, text prompts are refused with a clear message.
  EXPECT_EQ(run_cli("generate --model " + test::fixture("llama_gqa") + " --prompt hi"), "");
}

TEST(TextCommands, TokenizeAndDetokenizeRoundTrip) {
  const std::string t = dir() + "/llama3_split";
  const auto j = nlohmann::json::parse(run_cli("tokenize --tokenizer " + t + " --add-special-tokens 'Hello wörld 🎉'"));
  auto tok = Tokenizer::load(t);
  EXPECT_EQ(j["ids"].get<std::vector<int64_t>>(), tok->encode("Hello wörld 🎉", true));
  std::string list;
  for (const auto& id : j["ids"]) list += (list.empty() ? "" : ",") + std::to_string(id.get<int64_t>());
  // This tokenizer's ByteLevel adds a prefix space, which HF's decoder keeps.
  EXPECT_EQ(run_cli("detokenize --tokenizer " + t + " --skip-special-tokens " + list), " Hello wörld 🎉\n");
  EXPECT_EQ(run_cli("detokenize --tokenizer " + t + " " + list), "<|begin_of_text|> Hello wörld 🎉\n");
}

}  // namespace
}  // namespace cascade::daemon
