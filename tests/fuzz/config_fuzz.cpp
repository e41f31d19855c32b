// libFuzzer: config files and --set overrides as a user writes them (config/config.h).
// The bytes up to the first NUL are the TOML text; each NUL-separated piece after it is
// one override ("section.key=value"). Whatever the bytes, parse_config returns a Config
// or throws ConfigError (never anything else), and a Config it returns holds only what
// the schema allows: every number in its range, a slot count or "auto", devices listed
// once, an offload_compute the planner can take apart, no stand-in of toml_guard.h.
#include <cmath>
#include <string>
#include <vector>

#include "config/config.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;
using config::Config;

namespace {

void expect(bool ok, const char* what, const std::string& detail) {
  if (!ok) fuzz::broken(what, detail);
}

bool within(double v, double lo, double hi) { return std::isfinite(v) && v >= lo && v <= hi; }

// config/toml_guard.h's stand-ins (U+F0000..U+FFFFF: F3 B0..BF in UTF-8) never reach a
// value: parse_toml gives strings and keys their characters back.
void expect_no_stand_in(const std::string& s) {
  for (size_t i = 0; i + 1 < s.size(); ++i)
    if (static_cast<uint8_t>(s[i]) == 0xF3 && (static_cast<uint8_t>(s[i + 1]) & 0xF0) == 0xB0)
      fuzz::broken("a stand-in code point in a parsed string", s);
}

void check_placement(const config::PlacementSection& p) {
  for (size_t i = 0; i < p.max_memory.size(); ++i)
    for (size_t j = i + 1; j < p.max_memory.size(); ++j)
      expect(p.max_memory[i].device != p.max_memory[j].device, "a device has two budgets",
             p.max_memory[i].device.str());
  config::OffloadCompute oc;
  try {
    oc = config::parse_offload_compute(p.offload_compute);
  } catch (const std::invalid_argument&) {
    fuzz::broken("offload_compute passed the reader but not the planner's parser", p.offload_compute);
  }
  expect(!p.streamed_share || (oc.hybrid && within(*p.streamed_share, 0, 1)), "streamed_share out of place",
         p.offload_compute);
  expect(p.stream_slots == config::kAutoStreamSlots ||
             (p.stream_slots >= config::kMinStreamSlots && p.stream_slots <= config::kMaxStreamSlots),
         "stream_slots out of range", std::to_string(p.stream_slots));
}

void check(const Config& c) {
  expect(!c.model.path.empty(), "a config without model.path", c.source);
  for (const std::string& s : {c.model.path, c.placement.offload_folder, c.server.socket, c.server.api_key})
    expect_no_stand_in(s);
  for (const auto& [module, device] : c.placement.device_map) expect_no_stand_in(module);
  for (const std::string& m : c.quantization.skip_modules) expect_no_stand_in(m);
  check_placement(c.placement);
  const config::RuntimeSection& r = c.runtime;
  expect(
      r.max_batch >= 1 && r.max_seq_len >= 1 && r.microbatches >= 0 && r.prefill_chunk >= 0 && r.threads_per_stage >= 0,
      "a runtime count out of range", std::to_string(r.max_batch) + " " + std::to_string(r.max_seq_len));
  expect(within(r.heartbeat_timeout, 0.1, 1e7) && within(r.step_timeout, 0.1, 1e7), "a runtime timeout unbounded",
         std::to_string(r.heartbeat_timeout) + " " + std::to_string(r.step_timeout));
  expect(within(c.quantization.threshold, 0, 1e7), "threshold not finite", std::to_string(c.quantization.threshold));
  const config::ServerSection& s = c.server;
  expect(s.max_request_bytes > 0 && s.max_connections >= 1 && s.max_pending_connections >= 1 && s.max_tokens >= 1,
         "a server limit out of range", std::to_string(s.max_request_bytes));
  expect(within(s.header_timeout, 0.1, 1e7) && within(s.idle_timeout, 0.1, 1e7) && within(s.shutdown_grace, 0, 1e7),
         "a server timeout unbounded", std::to_string(s.header_timeout) + " " + std::to_string(s.idle_timeout));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  size_t end = bytes.find('\0');
  const std::string text = bytes.substr(0, end);
  std::vector<std::string> overrides;
  while (end != std::string::npos) {
    const size_t next = bytes.find('\0', end + 1);
    overrides.push_back(bytes.substr(end + 1, next == std::string::npos ? std::string::npos : next - end - 1));
    end = next;
  }
  try {
    check(config::parse_config(text, "fuzz.toml", "/base", overrides));
  } catch (const config::ConfigError&) {
  }
  return 0;
}
