// `cascade complete`: a small client for the daemon's Unix socket that streams a
// completion's text to stdout as it is generated (DESIGN §11).
#pragma once

#include <iosfwd>
#include <string>

namespace cascade::daemon {

struct CompleteOptions {
  std::string socket = "cascade.sock";
  std::string prompt;
  int64_t max_tokens = 64;
  double temperature = 0.0;
  std::string api_key;
};

// Streams text to `out`; returns 0, or 1 after printing the server's error to `err`.
int complete(const CompleteOptions& opts, std::ostream& out, std::ostream& err);

}  // namespace cascade::daemon
