// SentencePiece's "Precompiled" normalizer (T5, mT5, XLM-R, ALBERT …), as HF runs it.
//
// precompiled_charsmap (base64 in tokenizer.json) = [u32 LE: trie size in bytes]
// [the trie: darts-clone double-array units, u32 LE] [replacement strings, each NUL-ended].
// HF walks the text by extended grapheme clusters: a cluster shorter than 6 bytes that
// the trie maps is replaced whole; otherwise each character is replaced by its mapping,
// if it has one. A lookup takes the shortest prefix the trie holds (HF's
// common_prefix_search()[0]), not a whole-string match; kept as HF has it.
#include <unicode/brkiter.h>
#include <unicode/utext.h>

#include <boost/beast/core/detail/base64.hpp>
#include <string_view>

#include "daemon/tokenizer/tokenizer_parts.h"

namespace cascade::daemon::tok {
namespace {

class Precompiled : public Normalizer {
 public:
  explicit Precompiled(const nlohmann::json& j) {
    const std::string b64 = j.at("precompiled_charsmap").get<std::string>();
    // Not decoded_size(): it rounds down, and decode() writes the bytes of a trailing partial
    // quartet too (tokenizer_json_fuzz: a heap overflow on a 6-character charsmap).
    std::string raw((b64.size() + 3) / 4 * 3, '\0');
    const auto [written, read] = boost::beast::detail::base64::decode(raw.data(), b64.data(), b64.size());
    if (read != b64.size() && b64.find_first_not_of('=', read) != std::string::npos)
      throw TokenizerError("tokenizer.json: Precompiled precompiled_charsmap is not base64");
    raw.resize(written);
    if (raw.size() < 4) throw TokenizerError("tokenizer.json: Precompiled charsmap is shorter than its header");
    const uint32_t trie_bytes = static_cast<uint8_t>(raw[0]) | static_cast<uint8_t>(raw[1]) << 8 |
                                static_cast<uint8_t>(raw[2]) << 16 |
                                static_cast<uint32_t>(static_cast<uint8_t>(raw[3])) << 24;
    if (trie_bytes == 0 || trie_bytes % 4 != 0 || trie_bytes > raw.size() - 4)
      throw TokenizerError("tokenizer.json: Precompiled charsmap's trie size " + std::to_string(trie_bytes) +
                           " does not fit its " + std::to_string(raw.size()) + " bytes");
    units_.resize(trie_bytes / 4);
    for (size_t i = 0; i < units_.size(); ++i) {
      const auto* p = reinterpret_cast<const uint8_t*>(raw.data() + 4 + 4 * i);
      units_[i] = p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24;
    }
    normalized_ = raw.substr(4 + trie_bytes);
    if (!valid_utf8(normalized_))
      throw TokenizerError("tokenizer.json: Precompiled charsmap's replacements are not UTF-8");
  }

  void apply(Piece& p) const override {
    thread_local std::unique_ptr<icu::BreakIterator> graphemes = [] {
      UErrorCode st = U_ZERO_ERROR;
      std::unique_ptr<icu::BreakIterator> it(icu::BreakIterator::createCharacterInstance(icu::Locale::getRoot(), st));
      if (U_FAILURE(st)) throw TokenizerError(std::string("ICU grapheme iterator: ") + u_errorName(st));
      return it;
    }();
    UErrorCode st = U_ZERO_ERROR;
    UText* text = utext_openUTF8(nullptr, p.text.data(), static_cast<int64_t>(p.text.size()), &st);
    graphemes->setText(text, st);
    if (U_FAILURE(st)) {
      utext_close(text);
      throw TokenizerError(std::string("ICU grapheme iterator: ") + u_errorName(st));
    }
    std::string out;
    out.reserve(p.text.size());
    std::string_view rep;
    for (int32_t b = graphemes->first(), e = graphemes->next(); e != icu::BreakIterator::DONE;
         b = e, e = graphemes->next()) {
      const std::string_view g(p.text.data() + b, static_cast<size_t>(e - b));
      if (g.size() < 6 && transform(g, &rep)) {
        out += rep;
        continue;
      }
      for (size_t i = 0; i < g.size();) {
        const size_t n = std::min(utf8_len(static_cast<unsigned char>(g[i])), g.size() - i);
        if (transform(g.substr(i, n), &rep)) {
          out += rep;
        } else {
          out += g.substr(i, n);
        }
        i += n;
      }
    }
    utext_close(text);
    p.text = std::move(out);
  }

 private:
  // darts-clone unit fields.
  static uint32_t offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
  static uint32_t label(uint32_t u) { return u & ((1u << 31) | 0xFF); }
  static bool has_leaf(uint32_t u) { return (u >> 8) & 1; }

  // The replacement for the shortest prefix of `key` in the trie. A hostile charsmap
  // can point anywhere: an index outside the arrays is "no mapping".
  bool transform(std::string_view key, std::string_view* rep) const {
    size_t pos = offset(units_[0]);
    for (unsigned char c : key) {
      if (c == 0) break;
      pos ^= c;
      if (pos >= units_.size() || label(units_[pos]) != c) return false;
      const uint32_t unit = units_[pos];
      pos ^= offset(unit);
      if (pos >= units_.size()) return false;
      if (has_leaf(unit)) {
        const size_t at = units_[pos] & ((1u << 31) - 1);
        if (at >= normalized_.size()) return false;
        const size_t end = normalized_.find('\0', at);
        *rep = std::string_view(normalized_).substr(at, end == std::string::npos ? std::string::npos : end - at);
        return valid_utf8(*rep);  // `at` inside a character: HF would panic; here no mapping
      }
    }
    return false;
  }

  std::vector<uint32_t> units_;
  std::string normalized_;
};

}  // namespace

std::unique_ptr<Normalizer> make_precompiled(const nlohmann::json& j) { return std::make_unique<Precompiled>(j); }

}  // namespace cascade::daemon::tok
