// libFuzzer: POST /v1/completions bodies. Whatever the bytes, parse_completion either
// returns a request or throws ApiError (never anything else), and the error body the
// server would send is valid UTF-8 JSON; an accepted request's response (its n choices,
// logprobs and echo) renders as JSON too. Both kinds of model's limits are checked.
#include <nlohmann/json.hpp>

#include "daemon/http/api.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  try {
    const daemon::CompletionRequest r = daemon::parse_completion(body);
    // An encoder-decoder model's limits (T5) are the stricter: what they accept, a
    // decoder-only model's accept too, and they never take prompt logprobs.
    bool seq2seq_ok = true;
    try {
      daemon::check_limits(r, {256, 64, 32, 4, /*encoder_decoder=*/true});
    } catch (const daemon::ApiError& e) {
      seq2seq_ok = false;
      if (nlohmann::json::parse(daemon::error_json(e.status, e.what(), e.param), nullptr, false).is_discarded())
        fuzz::broken("error body is not JSON", e.what());
    }
    if (seq2seq_ok && r.sampling.prompt_logprobs) fuzz::broken("an encoder-decoder model took prompt logprobs", body);
    try {
      daemon::check_limits(r, {256, 64, 32, 4});
    } catch (const daemon::ApiError&) {
      if (seq2seq_ok) fuzz::broken("a decoder-only model refused what an encoder-decoder one took", body);
      throw;
    }
    std::vector<daemon::CompletionResult> choices(static_cast<size_t>(r.n));
    for (size_t i = 0; i < choices.size(); ++i) {
      choices[i].index = static_cast<int64_t>(i);
      choices[i].token_ids = r.prompt_ids;
      for (int64_t id : r.prompt_ids) choices[i].logprobs.push_back({id, -1.0 * static_cast<double>(i), {{id, 0.0}}});
    }
    const auto text_of = [&](int64_t id) { return r.prompt_text.substr(0, static_cast<size_t>(id) % 8); };
    const std::string out = daemon::completion_json("c", 0, "m", r, choices, r.prompt_text, text_of);
    if (nlohmann::json::parse(out, nullptr, false).is_discarded()) fuzz::broken("response is not JSON", out);
  } catch (const daemon::ApiError& e) {
    const std::string out = daemon::error_json(e.status, e.what(), e.param);
    if (nlohmann::json::parse(out, nullptr, false).is_discarded()) fuzz::broken("error body is not JSON", out);
  }
  return 0;
}
