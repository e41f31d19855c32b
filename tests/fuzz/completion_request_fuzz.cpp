// libFuzzer: POST /v1/completions bodies. Whatever the bytes, parse_completion either
// returns a request or throws ApiError (never anything else), and the error body the
// server would send is valid UTF-8 JSON.
#include <nlohmann/json.hpp>

#include "daemon/http/api.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  try {
    const daemon::CompletionRequest r = daemon::parse_completion(body);
    daemon::check_limits(r, {256, 64, 32});
  } catch (const daemon::ApiError& e) {
    const std::string out = daemon::error_json(e.status, e.what(), e.param);
    if (nlohmann::json::parse(out, nullptr, false).is_discarded()) fuzz::broken("error body is not JSON", out);
  }
  return 0;
}
