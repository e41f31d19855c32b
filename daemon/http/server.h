// `cascade serve` (DESIGN §8): HTTP/1.1 with Boost.Beast on a Unix socket (mode
// 0600) and, optionally, TCP; OpenAI-compatible /v1/completions with SSE streaming,
// plus /health, /v1/models, /v1/device_map and /metrics.
//
// Threads: the main thread runs Asio (every connection, the signal handler); the
// scheduler thread runs the steps. They meet in Scheduler::submit() and in the Sink
// callbacks, which post back to Asio.
//
// Limits (config [server]): body size (413), connections (429 when all are busy;
// connections without a whole request are capped apart and the oldest dropped first),
// header and idle timeouts, an optional bearer api_key (401). SIGTERM/SIGINT stop
// accepting, let in-flight requests finish within shutdown_grace, stop the stages,
// remove the socket and return 0. A stage failure restarts the stages (Supervisor); one
// that cannot be recovered stops the daemon the same way and returns 1.
//
// Each connection is a session of its own (daemon/http/session.h).
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace cascade::daemon {

struct ServeOptions {
  std::string config_file;             // or:
  std::string model_dir;               // a checkpoint, planned from measured budgets
  std::vector<std::string> overrides;  // --set, then --socket/--host/--port/--api-key
};

// Returns the exit code; throws on bad configuration or when the socket is taken.
int serve(const ServeOptions& opts, std::ostream& log);

// Where `path` stands: "free", "stale" (a socket file nobody answers on: removed), or
// throws std::runtime_error when a live daemon holds it or it is not a socket.
std::string claim_socket_path(const std::string& path);

}  // namespace cascade::daemon
