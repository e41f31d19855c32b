// Regexes of tokenizer.json through PCRE2 (UTF + UCP). The tokenizers library compiles
// them with Oniguruma, whose syntax differs from PCRE2's in one place that real files
// use: a `[` inside a character class opens a nested class that joins its parent
// (Bloom's pre-tokenizer, [^(\s|[.,!?…])]+, is one class excluding parentheses,
// whitespace, `|` and the punctuation), where PCRE2 reads a literal `[` and closes the
// class at the first `]`. onig_to_pcre2 flattens nested classes into their parent.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "daemon/tokenizer/tokenizer_parts.h"

namespace cascade::daemon::tok {
namespace {

// Appends the body of the class that starts at p[i] (past its `[` and any `^`) to `out`
// without its brackets, nested classes flattened (at most `depth` deep: a file is
// untrusted input); returns the index past its `]`.
size_t class_body(const std::string& p, size_t i, std::string& out, int depth = 16) {
  auto fail = [&](const std::string& why) {
    throw TokenizerError("tokenizer.json: regex '" + p + "': " + why + " at offset " + std::to_string(i));
  };
  for (bool first = true; i < p.size(); first = false) {
    if (p[i] == '\\' && i + 1 < p.size()) {  // an escape, \[ and \] included
      out.append(p, i, 2);
      i += 2;
    } else if (p[i] == ']' && !first) {  // a `]` first in a class is literal in both syntaxes
      return i + 1;
    } else if (p.compare(i, 2, "[:") == 0 && p.find(":]", i + 2) != std::string::npos) {  // [:alpha:], same in both
      const size_t e = p.find(":]", i + 2) + 2;
      out.append(p, i, e - i);
      i = e;
    } else if (p[i] == '[') {
      if (p.compare(i, 2, "[^") == 0) fail("a negated class inside a class is not supported");
      if (depth == 0) fail("classes nested too deep");
      i = class_body(p, i + 1, out, depth - 1);
    } else if (p.compare(i, 2, "&&") == 0) {
      fail("class intersection (&&) is not supported");
    } else {
      out += p[i++];
    }
  }
  fail("unterminated character class");
  return i;
}

}  // namespace

std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  size_t i = 0;
  while (i < p.size()) {
    if (p.compare(i, 2, "\\Q") == 0) {  // a quoted literal (what a {"String": …} pattern becomes)
      const size_t e = p.find("\\E", i + 2);
      const size_t end = e == std::string::npos ? p.size() : e + 2;
      out.append(p, i, end - i);
      i = end;
    } else if (p[i] == '\\' && i + 1 < p.size()) {
      out.append(p, i, 2);
      i += 2;
    } else if (p[i] == '[') {
      const bool negated = p.compare(i, 2, "[^") == 0;
      out += negated ? "[^" : "[";
      i = class_body(p, i + (negated ? 2 : 1), out);
      out += ']';
    } else {
      out += p[i++];
    }
  }
  return out;
}

Regex::Regex(const std::string& onig) {
  const std::string pattern = onig_to_pcre2(onig);
  int err = 0;
  PCRE2_SIZE off = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err, &off,
                        nullptr);
  if (!code_) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw TokenizerError("tokenizer.json: regex '" + onig + "' does not compile at offset " + std::to_string(off) +
                         ": " + reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(static_cast<pcre2_code*>(code_), PCRE2_JIT_COMPLETE);  // optional speed-up
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(const std::string& s) const {
  std::vector<std::pair<size_t, size_t>> out;
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  size_t pos = 0;
  // PCRE2 validates the whole subject's UTF-8 on every call unless told not to, which
  // makes a scan over a long text quadratic: validate once, on the first call.
  uint32_t opts = 0;
  while (pos <= s.size()) {
    const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, opts, md, nullptr);
    opts = PCRE2_NO_UTF_CHECK;
    if (rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21) {
      pcre2_match_data_free(md);
      throw TokenizerError("the text is not valid UTF-8");
    }
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (e == b) {  // empty match: step over one character
      pos = b + (b < s.size() ? utf8_len(static_cast<unsigned char>(s[b])) : 1);
      continue;
    }
    out.emplace_back(b, e);
    pos = e;
  }
  pcre2_match_data_free(md);
  return out;
}

}  // namespace cascade::daemon::tok
