// libFuzzer: the bytes of an HTTP request, through the parser the server uses with the
// server's limits, then the same routing and body parsing (daemon/http/server.cpp).
// Framing errors, parse errors and API errors are all answers; nothing may crash or
// produce an error body that is not valid UTF-8 JSON.
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "daemon/http/api.h"
#include "tests/fuzz/fuzz_util.h"

namespace http = boost::beast::http;
using namespace cascade;

namespace {

void check_json(const std::string& out) {
  if (nlohmann::json::parse(out, nullptr, false).is_discarded()) fuzz::broken("error body is not JSON", out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  http::request_parser<http::string_body> p;
  p.body_limit(4096);
  p.header_limit(16 * 1024);
  p.eager(true);
  boost::beast::error_code ec;
  p.put(boost::asio::buffer(data, size), ec);
  if (ec || !p.is_done()) {
    check_json(daemon::error_json(400, "malformed HTTP request: " + ec.message()));
    return 0;
  }
  const auto& req = p.get();
  const std::string target(req.target());
  const std::string path = target.substr(0, target.find('?'));
  if (path != "/v1/completions") {
    check_json(daemon::error_json(404, "no such endpoint: " + path));
    return 0;
  }
  try {
    daemon::check_limits(daemon::parse_completion(req.body()), {256, 64, 32});
  } catch (const daemon::ApiError& e) {
    check_json(daemon::error_json(e.status, e.what(), e.param));
  }
  return 0;
}
