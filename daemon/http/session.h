// One connection of `cascade serve` (server.h), inside the daemon's HTTP server: it
// reads requests one at a time (keep-alive), answers /health, /v1/models,
// /v1/device_map, /metrics, /tokenize and /detokenize itself, hands completions and
// chat completions to the scheduler and writes their results, streamed (SSE) or whole.
// server.cpp owns the listeners, the scheduler thread and shutdown.
//
// Threads: Asio's (the main thread) for everything but the scheduler's Sink callbacks,
// which post back to it.
#pragma once

#include <atomic>
#include <boost/asio.hpp>
#include <list>
#include <memory>
#include <string>

#include "config/config.h"
#include "daemon/http/api.h"
#include "daemon/http/metrics.h"
#include "daemon/scheduler.h"
#ifdef CASCADE_WITH_TOKENIZER
#include "daemon/http/chat_prompt.h"
#endif

namespace cascade::daemon {

class Supervisor;

// A connection as the pending list sees it: one that can be dropped to make room.
class EvictableConnection {
 public:
  virtual ~EvictableConnection() = default;
  virtual void evict() = 0;
};

// Everything the connections share. Lives on the main thread's stack in serve().
struct ServerShared {
  config::ServerSection cfg;
  std::string model_name;
  std::string device_map;  // plan JSON
  Limits limits;
  std::shared_ptr<const Tokenizer> tok;
#ifdef CASCADE_WITH_TOKENIZER
  ChatSetup chat;  // the model's chat template, for /v1/chat/completions
#endif
  Scheduler* scheduler = nullptr;
  Supervisor* supervisor = nullptr;
  Metrics metrics;
  std::atomic<int> connections{0};
  // Connections that have not sent a whole request yet, oldest first (Asio thread only):
  // the first to go when room is needed, so slow senders cannot lock everyone out.
  std::list<std::weak_ptr<EvictableConnection>> pending;
  std::atomic<bool> stopping{false};
};

// Accepts connections on `acc` until it is closed, each a session of its own, or a 429
// when the server is full of busy connections (make room: the oldest connection without
// a whole request goes first). Asio thread only.
void accept_on(boost::asio::local::stream_protocol::acceptor& acc, ServerShared& sh);
void accept_on(boost::asio::ip::tcp::acceptor& acc, ServerShared& sh);

}  // namespace cascade::daemon
