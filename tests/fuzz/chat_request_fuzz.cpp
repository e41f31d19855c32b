// libFuzzer: POST /v1/chat/completions bodies. Whatever the bytes, parse_chat returns a
// request or throws ApiError (never anything else), and the error body is valid JSON.
#include <nlohmann/json.hpp>

#include "daemon/http/api.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  try {
    const daemon::ChatRequest r = daemon::parse_chat(body);
    if (!r.messages.is_array() || r.messages.empty()) fuzz::broken("accepted without messages", body);
  } catch (const daemon::ApiError& e) {
    const std::string out = daemon::error_json(e.status, e.what(), e.param);
    if (nlohmann::json::parse(out, nullptr, false).is_discarded()) fuzz::broken("error body is not JSON", out);
  }
  return 0;
}
