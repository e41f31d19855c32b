// Internal pieces of the tokenizer (not a public header): text pieces, normalizers,
// pre-tokenizers, the BPE model and decoders, each built from its tokenizer.json
// object. Unsupported types throw TokenizerError naming the type.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "daemon/tokenizer/tokenizer.h"

namespace cascade::daemon::tok {

// The largest token id a tokenizer.json may use (vocabularies run to ~256 K; this bound
// keeps a hostile file from sizing the id table at will).
constexpr int64_t kMaxTokenId = int64_t{1} << 24;

// An integer field of tokenizer.json. nlohmann converts a float to an integer by a plain
// cast (undefined behaviour out of range: tokenizer_json_fuzz found 2e73), so anything
// but a JSON integer is refused by name.
inline int64_t json_int(const nlohmann::json& v, const char* what) {
  if (!v.is_number_integer()) throw TokenizerError(std::string("tokenizer.json: ") + what + " must be an integer");
  return v.get<int64_t>();
}

// A piece of text in the pipeline. `at_start`: it begins at offset 0 of the original
// text (Metaspace's prepend_scheme "first" prepends only there, as HF checks
// offsets_original().0 == 0).
struct Piece {
  std::string text;
  bool at_start = false;
};

// Unicode regex over UTF-8 (PCRE2 with UTF and UCP), from tokenizer.json's Oniguruma
// syntax (tokenizer_regex.cpp). Immutable; thread-safe.
class Regex {
 public:
  // Throws TokenizerError naming the pattern when it does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-overlapping matches, left to right, as [begin, end) byte ranges.
  std::vector<std::pair<size_t, size_t>> find_all(const std::string& s) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8
};

// An Oniguruma pattern in PCRE2 syntax: nested character classes flattened into their
// parent. Throws TokenizerError for what has no flat form (a negated nested class, &&).
std::string onig_to_pcre2(const std::string& pattern);

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
SplitBehavior parse_behavior(const std::string& name);
// Splits `p` at `matches` (the delimiters, or the kept parts when `invert`), HF semantics.
std::vector<Piece> split(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior b,
                         bool invert);

// ICU: Unicode normalization forms and full lower-casing (root locale).
std::string normalize_form(const std::string& s, const std::string& form);  // NFC, NFD, NFKC, NFKD
std::string to_lower(const std::string& s);

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void apply(Piece& p) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j);  // null -> nullptr

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual std::vector<Piece> apply(const Piece& p) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j);

// GPT-2's byte <-> printable character table used by ByteLevel.
const std::vector<std::string>& byte_to_char();  // 256 UTF-8 strings
const std::unordered_map<uint32_t, uint8_t>& char_to_byte();

// A tokenizer.json "model": one pre-tokenized word -> ids, and id -> token string.
class Model {
 public:
  virtual ~Model() = default;
  virtual void tokenize(const std::string& word, std::vector<int64_t>* out) const = 0;
  virtual const std::string* token(int64_t id) const = 0;  // nullptr for an unknown id
  virtual int64_t size() const = 0;                        // largest id + 1
};
// "BPE" (the default when "type" is absent) or "Unigram"; others throw naming the type.
std::unique_ptr<Model> make_model(const nlohmann::json& j);

// A vocabulary's byte-fallback tokens <0x00> … <0xFF>, which spell text no other token
// covers (BPE and Unigram with byte_fallback). Immutable after construction.
class ByteTokens {
 public:
  ByteTokens() { std::fill(ids_, ids_ + 256, -1); }
  explicit ByteTokens(const std::unordered_map<std::string, int64_t>& vocab);
  // Appends the ids spelling `raw` byte by byte and returns true, or appends nothing and
  // returns false when some byte has no token.
  bool spell(std::string_view raw, std::vector<int64_t>* out) const;

 private:
  int64_t ids_[256];  // -1 where the vocabulary lacks the byte's token
};

// Byte-pair encoding with byte fallback, <unk> (fused or not), ignore_merges and
// continuing-subword / end-of-word affixes.
class Bpe : public Model {
 public:
  explicit Bpe(const nlohmann::json& model);
  void tokenize(const std::string& word, std::vector<int64_t>* out) const override;
  const std::string* token(int64_t id) const override;
  int64_t size() const override { return static_cast<int64_t>(id_to_token_.size()); }

 private:
  struct PairHash {
    size_t operator()(const std::pair<int64_t, int64_t>& p) const {
      return std::hash<int64_t>()(p.first * 1000003 + p.second);
    }
  };
  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>, PairHash> merges_;  // -> (rank, id)
  int64_t unk_ = -1;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::string prefix_, suffix_;
  ByteTokens bytes_;
};

// SentencePiece's Unigram model as HF runs it: the segmentation with the highest total
// log-probability (Viterbi over every vocabulary piece that starts at each character),
// a character no piece covers costs min(score) - 10 and becomes <unk>, adjacent <unk>s
// fuse into one, and with byte_fallback an <unk> piece is spelled as <0xXX> tokens.
class Unigram : public Model {
 public:
  explicit Unigram(const nlohmann::json& model);
  void tokenize(const std::string& word, std::vector<int64_t>* out) const override;
  const std::string* token(int64_t id) const override;
  int64_t size() const override { return static_cast<int64_t>(pieces_.size()); }

 private:
  std::vector<std::string> pieces_;               // by id
  std::vector<double> scores_;                    // by id
  std::unordered_map<std::string, int64_t> ids_;  // a piece listed twice maps to its last id, as in HF
  std::vector<int64_t> sorted_;                   // ids_'s ids ordered by piece bytes: the prefix search
  int64_t unk_ = -1;
  double unk_score_ = 0;
  bool byte_fallback_ = false;
  ByteTokens bytes_;
};

// SentencePiece's normalizer as tokenizer.json carries it ("Precompiled"): a
// darts-clone double-array trie over UTF-8 and the replacement strings it points to.
std::unique_ptr<Normalizer> make_precompiled(const nlohmann::json& j);

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode(std::vector<std::string>& tokens) const = 0;  // HF decode_chain
};
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j);  // null -> nullptr

// The "type" of a tokenizer.json component; throws naming `what` when absent.
std::string component_type(const nlohmann::json& j, const char* what);

// UTF-8 helpers.
size_t utf8_len(unsigned char lead);
uint32_t utf8_decode(const std::string& s, size_t i, size_t* len);
std::string utf8_encode(uint32_t cp);
// Rust's String::from_utf8_lossy: each maximal invalid sequence (overlongs and
// surrogates included) becomes U+FFFD; valid_utf8: what Rust's String::from_utf8 accepts.
std::string lossy_utf8(std::string_view b);
bool valid_utf8(std::string_view b);

}  // namespace cascade::daemon::tok
