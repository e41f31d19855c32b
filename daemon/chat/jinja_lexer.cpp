// Splitting a template into text, expressions and statements, with Jinja2's whitespace
// control as transformers configures it (trim_blocks, lstrip_blocks), and tokenizing the
// expressions inside the tags.
#include <algorithm>
#include <cctype>

#include "daemon/chat/jinja_ast.h"

namespace cascade::chat::jinja {

void fail(int line, const std::string& what) {
  throw TemplateError("chat template line " + std::to_string(line) + ": " + what);
}

namespace {

int count_lines(const std::string& s, size_t from, size_t to) {
  int n = 0;
  for (size_t i = from; i < to && i < s.size(); ++i) n += s[i] == '\n';
  return n;
}

// lstrip_blocks: spaces and tabs from the start of the line up to a block or comment
// tag at `open` in `src` (only when nothing else stands before it on that line).
void lstrip_line(std::string& text, const std::string& src, size_t open) {
  size_t k = open;
  while (k > 0 && (src[k - 1] == ' ' || src[k - 1] == '\t')) --k;
  if (k > 0 && src[k - 1] != '\n') return;
  size_t n = std::min(open - k, text.size());
  while (n > 0 && (text[text.size() - 1] == ' ' || text[text.size() - 1] == '\t')) {
    text.pop_back();
    --n;
  }
}

void rstrip_all(std::string& text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
}

}  // namespace

std::vector<Segment> split_template(const std::string& src) {
  std::vector<Segment> out;
  std::string text;
  int line = 1;
  size_t i = 0;
  bool strip_next = false;  // the previous tag ended with `-`: strip the whitespace that follows
  bool trim_next = false;   // trim_blocks: drop one newline after a block or comment tag
  auto flush = [&] {
    if (!text.empty()) out.push_back({Segment::Kind::kText, text, line});
    text.clear();
  };
  while (i < src.size()) {
    const size_t open = src.find('{', i);
    size_t from = i;
    if (strip_next || trim_next) {
      if (strip_next) {
        while (from < src.size() && std::isspace(static_cast<unsigned char>(src[from]))) ++from;
      } else if (from < src.size() && src[from] == '\n') {
        ++from;
      } else if (src.compare(from, 2, "\r\n") == 0) {
        from += 2;
      }
      line += count_lines(src, i, from);
      strip_next = trim_next = false;
      i = from;
      continue;
    }
    if (open == std::string::npos) {
      text += src.substr(i);
      break;
    }
    const char k = open + 1 < src.size() ? src[open + 1] : '\0';
    if (k != '{' && k != '%' && k != '#') {
      text += src.substr(i, open + 1 - i);
      line += count_lines(src, i, open + 1);
      i = open + 1;
      continue;
    }
    text += src.substr(i, open - i);
    line += count_lines(src, i, open);
    const int tag_line = line;
    size_t body = open + 2;
    const bool minus = body < src.size() && src[body] == '-', plus = body < src.size() && src[body] == '+';
    if (minus || plus) ++body;
    if (minus)
      rstrip_all(text);
    else if (!plus && k != '{')
      lstrip_line(text, src, open);
    const std::string close = k == '{' ? "}}" : (k == '%' ? "%}" : "#}");
    size_t end = src.find(close, body);
    if (end == std::string::npos) fail(tag_line, std::string("unclosed '{") + k + "' tag");
    size_t stop = end;
    strip_next = stop > body && src[stop - 1] == '-';
    const bool keep_newline = stop > body && src[stop - 1] == '+';  // `+%}`: no trim_blocks here
    if (strip_next || keep_newline) --stop;
    std::string inner = src.substr(body, stop - body);
    line += count_lines(src, open, end + 2);
    i = end + 2;
    if (k == '#') {
      trim_next = !strip_next && !keep_newline;
      continue;
    }
    flush();
    if (k == '{') {
      out.push_back({Segment::Kind::kExpr, inner, tag_line});
      continue;
    }
    trim_next = !strip_next && !keep_newline;
    // {% raw %}: everything up to {% endraw %} is text.
    size_t a = inner.find_first_not_of(" \t\r\n");
    if (a != std::string::npos && inner.compare(a, 3, "raw") == 0 &&
        inner.find_first_not_of(" \t\r\n", a + 3) == std::string::npos) {
      size_t e = src.find("endraw", i);
      size_t tag = e == std::string::npos ? e : src.rfind("{%", e);
      if (tag == std::string::npos) fail(tag_line, "'raw' without 'endraw'");
      std::string raw = src.substr(i, tag - i);
      if (trim_next && !raw.empty() && raw[0] == '\n') raw.erase(0, 1);
      if (tag + 2 < src.size() && src[tag + 2] == '-') rstrip_all(raw);
      out.push_back({Segment::Kind::kText, raw, tag_line});
      size_t close_raw = src.find("%}", e);
      if (close_raw == std::string::npos) fail(tag_line, "unclosed 'endraw' tag");
      strip_next = src[close_raw - 1] == '-';
      trim_next = !strip_next;
      line += count_lines(src, i, close_raw + 2);
      i = close_raw + 2;
      continue;
    }
    out.push_back({Segment::Kind::kStmt, inner, tag_line});
  }
  flush();
  return out;
}

std::vector<Token> tokenize(const std::string& s, int line) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '\n') ++line;
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Token::Kind::kName, s.substr(i, j - i), line});
      i = j;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        for (++j; j < s.size() && std::isdigit(static_cast<unsigned char>(s[j])); ++j) {
        }
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) {
          is_float = true;
          for (j = k; j < s.size() && std::isdigit(static_cast<unsigned char>(s[j])); ++j) {
          }
        }
      }
      std::string num;
      for (size_t k = i; k < j; ++k)
        if (s[k] != '_') num += s[k];
      out.push_back({is_float ? Token::Kind::kFloat : Token::Kind::kInt, num, line});
      i = j;
      continue;
    }
    if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] != '\\' || j + 1 >= s.size()) {
          v += s[j];
          continue;
        }
        const char e = s[++j];
        switch (e) {
          case 'n':
            v += '\n';
            break;
          case 't':
            v += '\t';
            break;
          case 'r':
            v += '\r';
            break;
          case '0':
            v += '\0';
            break;
          case '\\':
            v += '\\';
            break;
          case '\'':
            v += '\'';
            break;
          case '"':
            v += '"';
            break;
          case '\n':
            break;
          case 'u':
          case 'x': {
            const int digits = e == 'u' ? 4 : 2;
            unsigned cp = 0;
            for (int d = 1; d <= digits; ++d) {
              const char h = j + d < s.size() ? s[j + d] : 'g';
              if (!std::isxdigit(static_cast<unsigned char>(h))) fail(line, "bad escape in a string");
              cp = cp * 16 + static_cast<unsigned>(
                                 std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
            }
            j += digits;
            v += utf8({cp});
            break;
          }
          default:
            v += '\\';
            v += e;
        }
      }
      if (j >= s.size()) fail(line, "unterminated string");
      out.push_back({Token::Kind::kString, v, line});
      i = j + 1;
      continue;
    }
    static const char* two[] = {"**", "//", "==", "!=", "<=", ">="};
    std::string op(1, c);
    for (const char* t : two)
      if (s.compare(i, 2, t) == 0) op = t;
    if (op.size() == 1 && std::string("+-*/%~|.,:()[]{}=<>").find(c) == std::string::npos)
      fail(line, std::string("unexpected character '") + c + "'");
    out.push_back({Token::Kind::kOp, op, line});
    i += op.size();
  }
  out.push_back({Token::Kind::kEnd, "", line});
  return out;
}

}  // namespace cascade::chat::jinja
