// Normalizers and pre-tokenizers: regexes through Regex (tokenizer_regex.cpp),
// normalization and lower-casing through ICU.
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include "daemon/tokenizer/tokenizer_parts.h"

namespace cascade::daemon::tok {
namespace {

// {"String": "x"} or {"Regex": "..."} -> a regex (literal strings are quoted).
std::unique_ptr<Regex> pattern_of(const nlohmann::json& p) {
  if (p.contains("Regex")) return std::make_unique<Regex>(p.at("Regex").get<std::string>());
  if (p.contains("String")) return std::make_unique<Regex>("\\Q" + p.at("String").get<std::string>() + "\\E");
  throw TokenizerError("tokenizer.json: pattern must be {\"String\": …} or {\"Regex\": …}: " + p.dump());
}

// Rust's Unicode \w and \s, spelled out so PCRE2 matches HF's regex crate.
const char* kWord = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}";

class Sequence : public Normalizer {
 public:
  explicit Sequence(const nlohmann::json& j) {
    for (const auto& n : j.at("normalizers")) parts_.push_back(make_normalizer(n));
  }
  void apply(Piece& p) const override {
    for (const auto& n : parts_) n->apply(p);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class Form : public Normalizer {
 public:
  explicit Form(std::string f) : form_(std::move(f)) {}
  void apply(Piece& p) const override { p.text = normalize_form(p.text, form_); }

 private:
  std::string form_;
};

class Lowercase : public Normalizer {
 public:
  void apply(Piece& p) const override { p.text = to_lower(p.text); }
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string s) : s_(std::move(s)) {}
  void apply(Piece& p) const override {
    if (!p.text.empty()) p.text = s_ + p.text;
  }

 private:
  std::string s_;
};

class Replace : public Normalizer {
 public:
  explicit Replace(const nlohmann::json& j)
      : re_(pattern_of(j.at("pattern"))), content_(j.at("content").get<std::string>()) {}
  void apply(Piece& p) const override {
    std::string out;
    size_t prev = 0;
    for (const auto& [b, e] : re_->find_all(p.text)) {
      out += p.text.substr(prev, b - prev) + content_;
      prev = e;
    }
    p.text = out + p.text.substr(prev);
  }

 private:
  std::unique_ptr<Regex> re_;
  std::string content_;
};

class Strip : public Normalizer {
 public:
  Strip(bool l, bool r) : left_(l), right_(r) {}
  void apply(Piece& p) const override {
    static const Regex lead("^\\s+"), trail("\\s+\\z");
    if (left_) {
      const auto m = lead.find_all(p.text);
      if (!m.empty()) {
        p.text.erase(0, m[0].second);
        p.at_start = false;  // the first kept character is past original offset 0
      }
    }
    if (right_) {
      const auto m = trail.find_all(p.text);
      if (!m.empty()) p.text.erase(m[0].first);
    }
  }

 private:
  bool left_, right_;
};

// ---- pre-tokenizers ----

class PreSequence : public PreTokenizer {
 public:
  explicit PreSequence(const nlohmann::json& j) {
    for (const auto& n : j.at("pretokenizers")) parts_.push_back(make_pre_tokenizer(n));
  }
  std::vector<Piece> apply(const Piece& p) const override {
    std::vector<Piece> cur = {p};
    for (const auto& t : parts_) {
      std::vector<Piece> next;
      for (const auto& c : cur) {
        for (auto& x : t->apply(c)) next.push_back(std::move(x));
      }
      cur = std::move(next);
    }
    return cur;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class RegexSplit : public PreTokenizer {
 public:
  RegexSplit(std::unique_ptr<Regex> re, SplitBehavior b, bool invert) : re_(std::move(re)), b_(b), invert_(invert) {}
  std::vector<Piece> apply(const Piece& p) const override { return split(p, re_->find_all(p.text), b_, invert_); }

 private:
  std::unique_ptr<Regex> re_;
  SplitBehavior b_;
  bool invert_;
};

// Each numeric character is its own match (HF splits on a char predicate).
class Digits : public PreTokenizer {
 public:
  explicit Digits(bool individual) : individual_(individual), re_("\\p{N}") {}
  std::vector<Piece> apply(const Piece& p) const override {
    return split(p, re_.find_all(p.text), individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false);
  }

 private:
  bool individual_;
  Regex re_;
};

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool prefix, bool use_regex) : prefix_(prefix), use_regex_(use_regex) {}
  std::vector<Piece> apply(const Piece& in) const override {
    static const Regex gpt2("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+");
    Piece p = in;
    if (prefix_ && (p.text.empty() || p.text[0] != ' ')) p.text = " " + p.text;
    std::vector<Piece> parts =
        use_regex_ ? split(p, gpt2.find_all(p.text), SplitBehavior::kIsolated, false) : std::vector<Piece>{p};
    for (auto& part : parts) {
      std::string mapped;
      for (unsigned char c : part.text) mapped += byte_to_char()[c];
      part.text = std::move(mapped);
    }
    return parts;
  }

 private:
  bool prefix_, use_regex_;
};

class Metaspace : public PreTokenizer {
 public:
  Metaspace(std::string rep, std::string scheme, bool split_it)
      : rep_(std::move(rep)), scheme_(std::move(scheme)), split_(split_it), re_("\\Q" + rep_ + "\\E") {}
  std::vector<Piece> apply(const Piece& in) const override {
    Piece p = in;
    std::string t;
    for (char c : p.text) t += c == ' ' ? rep_ : std::string(1, c);
    const bool starts = t.compare(0, rep_.size(), rep_) == 0;
    if (!starts && (scheme_ == "always" || (scheme_ == "first" && p.at_start))) t = rep_ + t;
    p.text = std::move(t);
    if (!split_) return {p};
    return split(p, re_.find_all(p.text), SplitBehavior::kMergedWithNext, false);
  }

 private:
  std::string rep_, scheme_;
  bool split_;
  Regex re_;
};

}  // namespace

std::string component_type(const nlohmann::json& j, const char* what) {
  if (!j.is_object() || !j.contains("type") || !j.at("type").is_string()) {
    throw TokenizerError(std::string("tokenizer.json: a ") + what + " has no \"type\": " + j.dump().substr(0, 80));
  }
  return j.at("type").get<std::string>();
}

SplitBehavior parse_behavior(const std::string& n) {
  if (n == "Removed") return SplitBehavior::kRemoved;
  if (n == "Isolated") return SplitBehavior::kIsolated;
  if (n == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (n == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (n == "Contiguous") return SplitBehavior::kContiguous;
  throw TokenizerError("tokenizer.json: unknown split behavior '" + n + "'");
}

std::vector<Piece> split(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior b,
                         bool invert) {
  // Segments covering the whole text, each flagged as a delimiter or not.
  struct Seg {
    size_t b, e;
    bool m;
  };
  std::vector<Seg> segs;
  size_t prev = 0;
  for (const auto& [mb, me] : matches) {
    if (prev != mb) segs.push_back({prev, mb, false});
    segs.push_back({mb, me, true});
    prev = me;
  }
  if (prev != p.text.size()) segs.push_back({prev, p.text.size(), false});
  if (invert) {
    for (auto& s : segs) s.m = !s.m;
  }
  std::vector<std::pair<size_t, size_t>> out;
  bool prev_match = false;
  switch (b) {
    case SplitBehavior::kRemoved:
      for (const auto& s : segs)
        if (!s.m) out.emplace_back(s.b, s.e);
      break;
    case SplitBehavior::kIsolated:
      for (const auto& s : segs) out.emplace_back(s.b, s.e);
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const auto& s : segs) {
        if (s.m && !prev_match && !out.empty())
          out.back().second = s.e;
        else
          out.emplace_back(s.b, s.e);
        prev_match = s.m;
      }
      break;
    case SplitBehavior::kMergedWithNext: {
      std::vector<std::pair<size_t, size_t>> rev;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->m && !prev_match && !rev.empty())
          rev.back().first = it->b;
        else
          rev.emplace_back(it->b, it->e);
        prev_match = it->m;
      }
      out.assign(rev.rbegin(), rev.rend());
      break;
    }
    case SplitBehavior::kContiguous:
      for (const auto& s : segs) {
        if (s.m == prev_match && !out.empty())
          out.back().second = s.e;
        else
          out.emplace_back(s.b, s.e);
        prev_match = s.m;
      }
      break;
  }
  std::vector<Piece> pieces;
  for (const auto& [pb, pe] : out) {
    if (pb == pe) continue;
    pieces.push_back({p.text.substr(pb, pe - pb), p.at_start && pb == 0});
  }
  return pieces;
}

// ---- ICU ----

std::string normalize_form(const std::string& s, const std::string& form) {
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* n = form == "NFC"    ? icu::Normalizer2::getNFCInstance(st)
                              : form == "NFD"  ? icu::Normalizer2::getNFDInstance(st)
                              : form == "NFKC" ? icu::Normalizer2::getNFKCInstance(st)
                                               : icu::Normalizer2::getNFKDInstance(st);
  if (U_FAILURE(st)) throw TokenizerError(std::string("ICU normalizer ") + form + ": " + u_errorName(st));
  icu::UnicodeString out = n->normalize(icu::UnicodeString::fromUTF8(s), st);
  if (U_FAILURE(st)) throw TokenizerError(std::string("ICU normalize: ") + u_errorName(st));
  std::string r;
  return out.toUTF8String(r);
}

std::string to_lower(const std::string& s) {
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(s);
  u.toLower(icu::Locale::getRoot());
  std::string r;
  return u.toUTF8String(r);
}

// ---- factories ----

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  const std::string t = component_type(j, "normalizer");
  if (t == "Sequence") return std::make_unique<Sequence>(j);
  if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") return std::make_unique<Form>(t);
  if (t == "Lowercase") return std::make_unique<Lowercase>();
  if (t == "Prepend") return std::make_unique<Prepend>(j.at("prepend").get<std::string>());
  if (t == "Replace") return std::make_unique<Replace>(j);
  if (t == "Strip") return std::make_unique<Strip>(j.value("strip_left", true), j.value("strip_right", true));
  if (t == "Precompiled") return make_precompiled(j);
  throw TokenizerError("tokenizer.json: normalizer '" + t +
                       "' is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, "
                       "Strip, Precompiled)");
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  const std::string t = component_type(j, "pre-tokenizer");
  if (t == "Sequence") return std::make_unique<PreSequence>(j);
  if (t == "Split") {
    return std::make_unique<RegexSplit>(pattern_of(j.at("pattern")),
                                        parse_behavior(j.at("behavior").get<std::string>()), j.value("invert", false));
  }
  if (t == "ByteLevel")
    return std::make_unique<ByteLevel>(j.value("add_prefix_space", true), j.value("use_regex", true));
  if (t == "Metaspace") {
    std::string scheme = j.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      throw TokenizerError("tokenizer.json: Metaspace prepend_scheme '" + scheme + "' is not always/first/never");
    }
    return std::make_unique<Metaspace>(j.value("replacement", std::string("\xE2\x96\x81")), scheme,
                                       j.value("split", true));
  }
  if (t == "Digits") return std::make_unique<Digits>(j.value("individual_digits", false));
  if (t == "Whitespace") {
    const std::string w = kWord;
    return std::make_unique<RegexSplit>(std::make_unique<Regex>("[" + w + "]+|[^" + w + "\\s]+"),
                                        SplitBehavior::kRemoved, true);
  }
  if (t == "WhitespaceSplit") {
    return std::make_unique<RegexSplit>(std::make_unique<Regex>("\\s+"), SplitBehavior::kRemoved, false);
  }
  throw TokenizerError("tokenizer.json: pre-tokenizer '" + t +
                       "' is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits, Whitespace, "
                       "WhitespaceSplit)");
}

// ---- bytes and UTF-8 ----

const std::vector<std::string>& byte_to_char() {
  static const std::vector<std::string> table = [] {
    // GPT-2: printable Latin-1 bytes stand for themselves; the rest map to U+0100 onwards.
    std::vector<std::string> t(256);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = utf8_encode(printable ? static_cast<uint32_t>(b) : next++);
    }
    return t;
  }();
  return table;
}

const std::unordered_map<uint32_t, uint8_t>& char_to_byte() {
  static const std::unordered_map<uint32_t, uint8_t> m = [] {
    std::unordered_map<uint32_t, uint8_t> r;
    for (int b = 0; b < 256; ++b) {
      size_t len = 0;
      r[utf8_decode(byte_to_char()[b], 0, &len)] = static_cast<uint8_t>(b);
    }
    return r;
  }();
  return m;
}

std::string lossy_utf8(std::string_view b) {
  std::string out;
  for (size_t i = 0; i < b.size();) {
    const unsigned char c = static_cast<unsigned char>(b[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    size_t ok = 0;
    if (n == 1) {
      ok = 1;
    } else if (n > 1) {
      ok = 1;
      while (ok < n && i + ok < b.size() && (static_cast<unsigned char>(b[i + ok]) & 0xC0) == 0x80) ++ok;
      // Reject overlongs and surrogates the way Rust does by checking the second byte's range.
      const unsigned char c1 = i + 1 < b.size() ? static_cast<unsigned char>(b[i + 1]) : 0;
      if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) ||
          (c == 0xF4 && c1 > 0x8F) || c == 0xC0 || c == 0xC1 || c > 0xF4) {
        ok = 1;
        n = 0;
      }
    }
    if (n > 0 && ok == n) {
      out.append(b, i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += std::max<size_t>(ok, 1);
    }
  }
  return out;
}

bool valid_utf8(std::string_view b) { return lossy_utf8(b) == b; }

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;  // a stray continuation byte: step over it alone
}

uint32_t utf8_decode(const std::string& s, size_t i, size_t* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = utf8_len(c);
  if (i + n > s.size()) n = 1;
  *len = n;
  if (n == 1) return c;
  uint32_t cp = c & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return cp;
}

std::string utf8_encode(uint32_t cp) {
  std::string o;
  if (cp < 0x80) {
    o += static_cast<char>(cp);
  } else if (cp < 0x800) {
    o += static_cast<char>(0xC0 | (cp >> 6));
    o += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    o += static_cast<char>(0xE0 | (cp >> 12));
    o += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    o += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    o += static_cast<char>(0xF0 | (cp >> 18));
    o += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    o += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    o += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return o;
}

}  // namespace cascade::daemon::tok
