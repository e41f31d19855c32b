#include "config/size.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace cascade::config {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::invalid_argument bad_size(std::string_view text) {
  return std::invalid_argument("invalid size '" + std::string(text) +
                               "' (expected a byte count such as 2GiB, 500MB, 1.5GB, 4096 or 'unlimited')");
}

}  // namespace

std::optional<uint64_t> parse_size(std::string_view text) {
  const std::string s = lower(text);
  if (s == "unlimited" || s == "inf") return std::nullopt;
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == 0) throw bad_size(text);
  const std::string number = s.substr(0, i);
  if (number.find('.') != number.rfind('.') || number == ".") throw bad_size(text);
  size_t j = i;
  if (j < s.size() && s[j] == ' ') ++j;
  const std::string unit = s.substr(j);
  double scale = 0;
  if (unit.empty() || unit == "b")
    scale = 1;
  else if (unit == "kb" || unit == "k")
    scale = 1e3;
  else if (unit == "mb" || unit == "m")
    scale = 1e6;
  else if (unit == "gb" || unit == "g")
    scale = 1e9;
  else if (unit == "tb" || unit == "t")
    scale = 1e12;
  else if (unit == "kib")
    scale = 1024.0;
  else if (unit == "mib")
    scale = 1024.0 * 1024;
  else if (unit == "gib")
    scale = 1024.0 * 1024 * 1024;
  else if (unit == "tib")
    scale = 1024.0 * 1024 * 1024 * 1024;
  else
    throw bad_size(text);
  const double value = std::stod(number) * scale;
  if (!std::isfinite(value) || value >= 1.8e19) throw bad_size(text);
  return static_cast<uint64_t>(std::llround(value));
}

std::string format_bytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", v, kUnits[u]);
  return buf;
}

}  // namespace cascade::config
