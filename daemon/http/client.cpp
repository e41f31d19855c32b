#include "daemon/http/client.h"

#include <boost/asio.hpp>
#include <nlohmann/json.hpp>
#include <ostream>

namespace cascade::daemon {

namespace net = boost::asio;
using local = net::local::stream_protocol;
using nlohmann::json;

int complete(const CompleteOptions& o, std::ostream& out, std::ostream& err) {
  net::io_context ioc;
  local::socket sock(ioc);
  boost::system::error_code ec;
  sock.connect(local::endpoint(o.socket), ec);
  if (ec) {
    err << "cascade complete: cannot connect to " << o.socket << ": " << ec.message()
        << " (is `cascade serve` running?)\n";
    return 1;
  }
  const std::string body =
      json({{"prompt", o.prompt}, {"max_tokens", o.max_tokens}, {"temperature", o.temperature}, {"stream", true}})
          .dump();
  std::string req = "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";
  if (!o.api_key.empty()) req += "Authorization: Bearer " + o.api_key + "\r\n";
  req += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  net::write(sock, net::buffer(req), ec);
  if (ec) {
    err << "cascade complete: sending the request: " << ec.message() << "\n";
    return 1;
  }
  // The stream is `Connection: close`: read until EOF, handling events as they end.
  std::string buf;
  bool header_done = false;
  int status = 0;
  char chunk[4096];
  for (;;) {
    const size_t n = sock.read_some(net::buffer(chunk), ec);
    buf.append(chunk, n);
    if (!header_done) {
      const size_t end = buf.find("\r\n\r\n");
      if (end != std::string::npos) {
        status = std::atoi(buf.c_str() + buf.find(' ') + 1);
        buf.erase(0, end + 4);
        header_done = true;
      }
    }
    if (header_done && status == 200) {
      size_t end;
      while ((end = buf.find("\n\n")) != std::string::npos) {
        const std::string event = buf.substr(0, end);
        buf.erase(0, end + 2);
        if (event.rfind("data: ", 0) != 0) continue;
        const std::string data = event.substr(6);
        if (data == "[DONE]") {
          out << "\n" << std::flush;
          return 0;
        }
        const json j = json::parse(data, nullptr, false);
        if (j.contains("error")) {
          err << "\ncascade complete: server error: " << j["error"].value("message", data) << "\n";
          return 1;
        }
        out << j["choices"][0].value("text", "") << std::flush;
      }
    }
    if (ec) break;
  }
  if (status != 200) {
    const size_t cl = buf.find("\r\n\r\n");
    const json j = json::parse(cl == std::string::npos ? buf : buf.substr(cl + 4), nullptr, false);
    err << "cascade complete: HTTP " << status << ": "
        << (j.is_object() && j.contains("error") ? j["error"].value("message", buf) : buf) << "\n";
    return 1;
  }
  err << "cascade complete: the connection ended before the stream was done\n";
  return 1;
}

}  // namespace cascade::daemon
