#include "config/toml_guard.h"

#include <cstdint>
#include <cstdio>
#include <utility>

namespace cascade::config {
namespace {

constexpr char32_t kStandIn = 0xF0000;  // stand-in of c: kStandIn + c

// The code point of the UTF-8 sequence at text[i] and its length; length 0 where the
// bytes are not one, which toml++ itself reports.
std::pair<char32_t, size_t> decode(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t b = byte(i);
  if (b < 0x80) return {b, 1};
  const size_t length = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 0;
  if (length == 0 || b > 0xF4 || i + length > text.size()) return {0, 0};
  char32_t c = b & (0x7F >> length);
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return {0, 0};
    c = (c << 6) | (byte(i + k) & 0x3F);
  }
  static constexpr char32_t kLeast[] = {0, 0, 0x80, 0x800, 0x10000};  // shorter forms are not UTF-8
  if (c < kLeast[length] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return {0, 0};
  return {c, length};
}

void encode(char32_t c, std::string* out) {
  if (c < 0x800) {
    *out += static_cast<char>(0xC0 | (c >> 6));
  } else if (c < 0x10000) {
    *out += static_cast<char>(0xE0 | (c >> 12));
    *out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (c >> 18));
    *out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
  }
  *out += static_cast<char>(0x80 | (c & 0x3F));
}

bool is_stand_in(char32_t c) { return c > kStandIn && trips_toml_whitespace_test(c - kStandIn); }

// Every code point `from` picks replaced by `to` of it; other bytes as they are.
template <typename From, typename To>
std::string map_code_points(std::string_view text, From from, To to) {
  std::string out;
  out.reserve(text.size() + text.size() / 2);
  for (size_t i = 0; i < text.size();) {
    const auto [c, length] = decode(text, i);
    if (length > 1 && from(c)) {
      encode(to(c), &out);
    } else {
      out.append(text.substr(i, length ? length : 1));
    }
    i += length ? length : 1;
  }
  return out;
}

std::string restore(std::string_view text) {
  return map_code_points(text, is_stand_in, [](char32_t c) { return c - kStandIn; });
}

void restore(toml::node& node);

void restore(toml::table& table) {
  bool renamed = false;
  for (auto&& [key, value] : table) {
    restore(value);
    renamed = renamed || restore(key.str()) != key.str();
  }
  if (!renamed) return;
  // Keys are immutable: every value moves under its restored key, and back into this
  // table, which keeps its own line (a table assigned to would take the new one's, none).
  toml::table out;
  for (auto&& [key, value] : table) out.insert(toml::key(restore(key.str()), key.source()), std::move(value));
  table.clear();
  for (auto&& [key, value] : out) table.insert(key, std::move(value));
}

void restore(toml::node& node) {
  if (auto* t = node.as_table()) {
    restore(*t);
  } else if (auto* a = node.as_array()) {
    for (auto& e : *a) restore(e);
  } else if (auto* s = node.as_string()) {
    s->get() = restore(s->get());
  }
}

// The first line that holds a code point of the stand-ins' range, or 0.
size_t line_with_a_stand_in(std::string_view text, char32_t* found) {
  size_t line = 1;
  for (size_t i = 0; i < text.size();) {
    const auto [c, length] = decode(text, i);
    if (length > 1 && is_stand_in(c)) return *found = c, line;
    if (c == '\n') ++line;
    i += length ? length : 1;
  }
  return 0;
}

}  // namespace

bool trips_toml_whitespace_test(char32_t c) {
  // toml++ 3.3's is_non_ascii_horizontal_whitespace: [U+00A0, U+FEFF] in groups of
  // 0x3FA; a group whose bit is set in kNoSpace holds no whitespace, groups 5 and 7 are
  // looked at one by one, and the rest fall to the unreachable default.
  constexpr uint64_t kNoSpace = 0x7FFFFFFFFFFFF75Eull;
  if (c <= 0xA0 || c >= 0xFEFF || c == 0x3000) return false;
  const uint64_t group = (c - 0xA0) / 0x3FA;
  return !((1ull << group) & kNoSpace) && group != 5 && group != 7;
}

toml::table parse_toml(std::string_view text, const std::string& source) {
  char32_t c = 0;
  if (const size_t line = line_with_a_stand_in(text, &c)) {
    char name[16];
    std::snprintf(name, sizeof name, "U+%05X", static_cast<unsigned>(c));
    const std::string why = std::string("code point ") + name + " (private use) is not read in config files";
    throw toml::parse_error(why.c_str(), toml::source_position{static_cast<toml::source_index>(line), 1},
                            std::make_shared<const std::string>(source));
  }
  const std::string hidden = map_code_points(text, trips_toml_whitespace_test, [](char32_t c) { return c + kStandIn; });
  try {
    toml::table table = toml::parse(hidden, source);
    restore(table);
    return table;
  } catch (const toml::parse_error& e) {
    throw toml::parse_error(restore(e.description()).c_str(), e.source());
  }
}

}  // namespace cascade::config
