// Switches read from the process environment: measurement and fallback knobs that are
// not part of a run's configuration (README, "Tests and fixtures"). Each caller reads its
// variable once (a function-local static), so these are cheap to call anywhere,
// CUDA sources included (no dependencies beyond the standard library).
#pragma once

#include <cstdlib>
#include <cstring>
#include <optional>

namespace cascade::config {

// A flag that leaves its default only on the one value that says so: "0" turns a
// default-on flag off, "1" turns a default-off flag on; unset or anything else keeps
// `fallback`.
inline bool env_flag(const char* name, bool fallback) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, fallback ? "0" : "1") == 0 ? !fallback : fallback;
}

// An integer setting: nullopt when unset, else the leading decimal number (0 when there
// is none, as strtol reads it).
inline std::optional<long> env_int(const char* name) {
  const char* e = std::getenv(name);
  if (!e) return std::nullopt;
  return std::strtol(e, nullptr, 10);
}

}  // namespace cascade::config
