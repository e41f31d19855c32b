#include "daemon/http/session.h"

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <chrono>
#include <ctime>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <sstream>

#include "config/config.h"
#include "daemon/http/reply.h"
#include "daemon/scheduler.h"
#include "daemon/supervisor.h"
#ifdef CASCADE_WITH_TOKENIZER
#include "daemon/http/chat_prompt.h"
#include "daemon/tokenizer/tokenizer.h"
#endif

namespace cascade::daemon {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using nlohmann::json;
using local = net::local::stream_protocol;

std::string new_id(const char* prefix) {
  static std::atomic<uint64_t> n{0};
  static const uint64_t base = std::random_device()();
  std::ostringstream s;
  s << prefix << std::hex << base << "-" << n++;
  return s.str();
}

std::string status_line(int status) {
  return "HTTP/1.1 " + std::to_string(status) + " " +
         std::string(http::obsolete_reason(static_cast<http::status>(status))) + "\r\n";
}

// A token's text for logprobs; its raw bytes, which may be part of a character.
std::string token_text(const Tokenizer* tok, int64_t id) {
#ifdef CASCADE_WITH_TOKENIZER
  if (tok) return tok->decode({id}, /*skip_special_tokens=*/false);
#else
  (void)tok;
#endif
  return "token_id:" + std::to_string(id);
}

// A token-id prompt as echo returns it.
std::string prompt_text(const Tokenizer* tok, const std::vector<int64_t>& ids) {
#ifdef CASCADE_WITH_TOKENIZER
  if (tok) return tok->decode(ids, /*skip_special_tokens=*/false);
#else
  (void)tok;
  (void)ids;
#endif
  return "";
}

// One connection. Reads requests one at a time (keep-alive); a streaming completion
// takes the connection over until it ends (Connection: close).
template <class Stream>
class Session : public EvictableConnection, public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(Stream s, ServerShared& sh) : stream_(std::move(s)), sh_(sh) {
    ++sh_.connections;
    sh_.metrics.add_open_connections(1);
  }
  ~Session() override {
    unmark_pending();
    --sh_.connections;
    sh_.metrics.add_open_connections(-1);
  }

  void evict() override {
    unmark_pending();
    sh_.metrics.connection_evicted();
    close();
  }

  void start(bool refuse) {
    if (refuse) {
      respond(429,
              error_json(429, "too many connections (server.max_connections = " +
                                  std::to_string(sh_.cfg.max_connections) + ")"),
              false);
      return;
    }
    read(true);
  }

  // The scheduler's view of this request (called on the scheduler thread).
  class RequestSink : public Sink {
   public:
    explicit RequestSink(std::shared_ptr<Session> s) : s_(std::move(s)) {}
    void on_tokens(const Delta& d) override {
      net::post(s_->stream_.get_executor(), [s = s_, d] { s->on_tokens(d); });
    }
    void on_done(const CompletionResult& r) override {
      net::post(s_->stream_.get_executor(), [s = s_, r] { s->on_done(r); });
    }
    void on_error(int status, const std::string& m) override {
      net::post(s_->stream_.get_executor(), [s = s_, status, m] { s->on_error(status, m); });
    }
    bool cancelled() const override { return s_->gone_; }

   private:
    std::shared_ptr<Session> s_;
  };

 private:
  // The next request. A kept-alive connection may sit idle up to idle_timeout for its
  // first byte; from then on (and from the start on a new connection) the whole request
  // must arrive within header_timeout, so a slow sender holds a connection no longer
  // on its tenth request than on its first.
  void read(bool first) {
    mark_pending();
    if (first || buf_.size() > 0) return read_request();
    expire_in(sh_.cfg.idle_timeout);
    stream_.async_read_some(buf_.prepare(4096), [self = this->shared_from_this()](beast::error_code ec, size_t n) {
      if (ec) return self->close();
      self->buf_.commit(n);
      self->read_request();
    });
  }

  void read_request() {
    mark_pending();
    parser_.emplace();
    parser_->body_limit(sh_.cfg.max_request_bytes);
    parser_->header_limit(16 * 1024);
    expire_in(sh_.cfg.header_timeout);
    http::async_read(stream_, buf_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void expire_in(double seconds) {
    beast::get_lowest_layer(stream_).expires_after(std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  }

  void mark_pending() {
    if (pending_) return;
    pending_it_ = sh_.pending.insert(sh_.pending.end(), this->weak_from_this());
    pending_ = true;
  }
  void unmark_pending() {
    if (!pending_) return;
    sh_.pending.erase(pending_it_);
    pending_ = false;
  }

  void on_read(beast::error_code ec) {
    unmark_pending();
    if (ec == http::error::body_limit) {
      respond(413,
              error_json(413, "the request body is larger than server.max_request_bytes (" +
                                  std::to_string(sh_.cfg.max_request_bytes) + " bytes)"),
              false);
      return;
    }
    if (ec == http::error::header_limit) {
      respond(431, error_json(431, "the request header is too large"), false);
      return;
    }
    // Bad framing (a line without a colon, a bad Content-Length, HTTP/2's preface, a TLS
    // ClientHello, ...) gets a 400 that says so; a client that hung up mid-request or a
    // timeout gets nothing (nobody is there to read it).
    if (ec && ec.category() == http::make_error_code(http::error::bad_method).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      sh_.metrics.request_finished(400);
      respond(400, error_json(400, "malformed HTTP request: " + ec.message()), false);
      return;
    }
    if (ec) return close();  // timeout, reset, EOF: nothing to answer
    beast::get_lowest_layer(stream_).expires_never();
    try {
      handle(parser_->get());
    } catch (const std::exception& e) {  // a bug, not the client's fault: answer, keep serving
      sh_.metrics.request_finished(500);
      respond(500, error_json(500, std::string("internal error: ") + e.what()), false);
    }
  }

  // While a non-streaming request waits for its result nothing is written, so a client
  // that hangs up would keep its KV slot until the generation ends: watch the socket
  // instead. End of stream or an error means gone (the slot frees at the next step);
  // bytes mean a pipelined next request, kept for read().
  // One read at a time: when the response is out before the watch ends, the watch's
  // end starts the next request's read (read_after_watch_).
  void watch_for_hangup() {
    watching_ = true;
    stream_.async_read_some(buf_.prepare(4096), [self = this->shared_from_this()](beast::error_code ec, size_t n) {
      self->watching_ = false;
      if (!ec) self->buf_.commit(n);
      if (self->read_after_watch_) {
        self->read_after_watch_ = false;
        return ec ? self->close() : self->read_request();
      }
      if (ec && ec != net::error::operation_aborted) self->gone_ = true;
    });
  }

  void handle(const http::request<http::string_body>& req) {
    keep_alive_ = req.keep_alive();
    if (!sh_.cfg.api_key.empty()) {
      const auto auth = req[http::field::authorization];
      if (auth != "Bearer " + sh_.cfg.api_key)
        return respond(401, error_json(401, "a valid API key is required (Authorization: Bearer …)"), keep_alive_);
    }
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    const bool get = req.method() == http::verb::get, post = req.method() == http::verb::post;
    auto only = [&](bool ok, const char* allowed) {
      if (!ok) respond(405, error_json(405, "method not allowed on " + path + "; use " + allowed), keep_alive_);
      return ok;
    };
    if (path == "/v1/completions") {
      if (only(post, "POST")) completion(req.body());
    } else if (path == "/v1/chat/completions") {
      if (only(post, "POST")) chat(req.body());
    } else if (path == "/tokenize" || path == "/detokenize") {
      if (only(post, "POST")) tokenize(path == "/tokenize", req.body());
    } else if (path == "/health") {
      if (only(get, "GET")) health();
    } else if (path == "/v1/models") {
      if (only(get, "GET"))
        respond(200,
                to_json_text(json({{"object", "list"},
                                   {"data",
                                    {{{"id", sh_.model_name},
                                      {"object", "model"},
                                      {"owned_by", "cascade"},
                                      {"max_model_len", sh_.limits.max_seq_len}}}}})),
                keep_alive_);
    } else if (path == "/v1/device_map") {
      if (only(get, "GET")) respond(200, sh_.device_map, keep_alive_);
    } else if (path == "/metrics") {
      if (only(get, "GET")) respond(200, sh_.metrics.render(), keep_alive_, "text/plain; version=0.0.4");
    } else {
      respond(404, error_json(404, "no such endpoint: " + path), keep_alive_);
    }
  }

  // POST /tokenize {"prompt", "add_special_tokens"} and /detokenize {"tokens"}.
  void tokenize(bool encode, const std::string& body) {
    try {
#ifdef CASCADE_WITH_TOKENIZER
      if (!sh_.tok) throw ApiError(400, "this model has no tokenizer.json");
      json out;
      if (encode) {
        const TokenizeRequest r = parse_tokenize(body);
        const std::vector<int64_t> ids = sh_.tok->encode(r.text, r.add_special_tokens);
        out = {{"tokens", ids}, {"count", ids.size()}, { "max_model_len", sh_.limits.max_seq_len }};
      } else {
        const std::vector<int64_t> ids = parse_detokenize(body);
        for (int64_t id : ids)
          if (id < 0 || id >= sh_.limits.vocab_size)
            throw ApiError(400, "token id " + std::to_string(id) + " is out of range", "tokens");
        out = {{ "prompt", sh_.tok->decode(ids, /*skip_special_tokens=*/false) }};
      }
      respond(200, to_json_text(out), keep_alive_);
#else
      (void)encode;
      (void)body;
      throw ApiError(400, "this build has no tokenizer");
#endif
    } catch (const ApiError& e) {
      respond(e.status, error_json(e.status, e.what(), e.param), keep_alive_);
    } catch (const std::exception& e) {  // the tokenizer refusing its input
      respond(400, error_json(400, e.what()), keep_alive_);
    }
  }

  void health() {
    const Supervisor::State state = sh_.supervisor->state();
    const bool up = state == Supervisor::State::kReady && !sh_.scheduler->failed();
    json stages = json::array();
    for (const auto& s : sh_.supervisor->stages()) {
      stages.push_back({{"rank", s.rank},
                        {"label", s.label},
                        {"host", s.ready.host},
                        {"pid", s.ready.pid},
                        {"state", up ? "ready" : to_string(state)}});
    }
    json j = {{"status", sh_.stopping ? "stopping" : to_string(state)},
              {"pid", ::getpid()},
              {"stages", stages},
              {"restarts", sh_.supervisor->restarts()},
              {"running", sh_.scheduler->running()},
              {"queued", sh_.scheduler->queued()}};
    if (!up) j["error"] = sh_.scheduler->failure();
    respond(up ? 200 : 503, to_json_text(j), keep_alive_);
  }

  void completion(const std::string& body) {
    chat_ = false;
    try {
      req_ = parse_completion(body);
      if (req_.text_prompt) {
#ifdef CASCADE_WITH_TOKENIZER
        if (!sh_.tok) throw ApiError(400, "this model has no tokenizer.json: send the prompt as token ids", "prompt");
        req_.prompt_ids = sh_.tok->encode(req_.prompt_text, /*add_special_tokens=*/true);
#else
        throw ApiError(400, "this build has no tokenizer: send the prompt as token ids", "prompt");
#endif
      }
      check_limits(req_, sh_.limits);
    } catch (const ApiError& e) {
      sh_.metrics.request_finished(e.status);
      return respond(e.status, error_json(e.status, e.what(), e.param), keep_alive_);
    }
    submit("cmpl-");
  }

  void chat(const std::string& body) {
    chat_ = false;
    try {
#ifdef CASCADE_WITH_TOKENIZER
      const ChatRequest r = parse_chat(body);
      if (!sh_.tok) throw ApiError(400, "this model has no tokenizer.json, which chat needs", "messages");
      req_ = chat_prompt(r, sh_.chat, *sh_.tok, sh_.limits);
      chat_ = true;
#else
      throw ApiError(400, "this build has no tokenizer, which chat needs", "messages");
#endif
    } catch (const ApiError& e) {
      sh_.metrics.request_finished(e.status);
      return respond(e.status, error_json(e.status, e.what(), e.param), keep_alive_);
    }
    submit("chatcmpl-");
  }

  // Hands the parsed request to the scheduler and starts the response.
  void submit(const char* id_prefix) {
    ReplySetup rs{req_, chat_, new_id(id_prefix), sh_.model_name, static_cast<int64_t>(std::time(nullptr)), "", {}};
    const Tokenizer* tok = sh_.tok.get();
    rs.text_of = [tok](int64_t id) { return token_text(tok, id); };
    if (req_.echo) rs.echo_text = req_.text_prompt ? req_.prompt_text : prompt_text(tok, req_.prompt_ids);
    reply_ = std::make_unique<Reply>(std::move(rs));
    const int rc = sh_.scheduler->submit({req_, std::make_shared<RequestSink>(this->shared_from_this())});
    if (rc != 0) {
      sh_.metrics.request_finished(rc);
      const std::string msg = rc == 429      ? "the server is busy: every KV slot is taken and the queue is full"
                              : sh_.stopping ? "the server is shutting down"
                                             : "the model is unavailable: " + sh_.scheduler->failure() +
                                                   (sh_.scheduler->failed() ? "" : " (the stages are being restarted)");
      return respond(rc, error_json(rc, msg), keep_alive_);
    }
    if (req_.stream) {
      streaming_ = true;
      write(status_line(200) +
            "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n");
    } else {
      watch_for_hangup();
    }
  }

  void on_tokens(const Delta& d) {
    if (!streaming_ || gone_) return;
    std::string events = reply_->on_tokens(d);
    if (!events.empty()) write(std::move(events));
  }

  void on_done(const CompletionResult& r) {
    if (gone_ || !reply_ || reply_->complete()) return;
    std::string out = reply_->on_done(r);
    if (!reply_->complete()) {
      if (streaming_ && !out.empty()) write(std::move(out));
      return;
    }
    if (!streaming_) return respond(200, out, keep_alive_);
    write(std::move(out), /*last=*/true);
  }

  void on_error(int status, const std::string& message) {
    if (gone_) return;
    if (!streaming_) return respond(status, error_json(status, message), false);
    // Headers are out: report in-band, the way OpenAI's stream does.
    write("data: " + error_json(status, message) + "\n\n", /*last=*/true);
  }

  void respond(int status, const std::string& body, bool keep_alive, const char* type = "application/json") {
    std::string head = status_line(status) + "Content-Type: " + type +
                       "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
                       (keep_alive ? "" : "Connection: close\r\n") + "\r\n";
    write(head + body, !keep_alive, keep_alive);
  }

  // Writes go out one at a time, in order.
  void write(std::string data, bool last = false, bool then_read = false) {
    out_.push_back({std::move(data), last, then_read});
    if (out_.size() == 1) write_next();
  }

  void write_next() {
    beast::get_lowest_layer(stream_).expires_after(
        std::chrono::milliseconds(static_cast<int64_t>(sh_.cfg.idle_timeout * 1000)));
    net::async_write(stream_, net::buffer(out_.front().data),
                     [self = this->shared_from_this()](beast::error_code ec, size_t) { self->on_write(ec); });
  }

  void on_write(beast::error_code ec) {
    beast::get_lowest_layer(stream_).expires_never();
    if (ec) {
      gone_ = true;  // the client went away: its sequence gives up the slot at the next step
      out_.clear();
      return close();
    }
    const Out done = std::move(out_.front());
    out_.pop_front();
    if (!out_.empty()) return write_next();
    if (done.last) return close();
    if (done.then_read && sh_.stopping) return close();
    if (done.then_read && watching_) {  // the watch's read becomes the next request's first
      read_after_watch_ = true;
      expire_in(sh_.cfg.idle_timeout);
    } else if (done.then_read) {
      read(false);
    }
  }

  void close() {
    beast::error_code ec;
    beast::get_lowest_layer(stream_).socket().shutdown(net::socket_base::shutdown_both, ec);
    beast::get_lowest_layer(stream_).close();
  }

  struct Out {
    std::string data;
    bool last = false, then_read = false;
  };
  Stream stream_;
  ServerShared& sh_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::deque<Out> out_;
  CompletionRequest req_;
  std::unique_ptr<Reply> reply_;  // of the request in flight
  bool keep_alive_ = true, streaming_ = false;
  bool chat_ = false;                                 // a /v1/chat/completions request
  bool watching_ = false, read_after_watch_ = false;  // see watch_for_hangup()
  std::atomic<bool> gone_{false};
  bool pending_ = false;  // in sh_.pending, at pending_it_
  std::list<std::weak_ptr<EvictableConnection>>::iterator pending_it_;
};

// Makes room for a new connection by dropping the oldest that has not sent a whole
// request: while the pending ones are at server.max_pending_connections, or while all
// connections are at server.max_connections. False when the server is full of busy
// connections (the new one gets a 429).
bool make_room(ServerShared& sh) {
  auto evict_oldest = [&sh] {
    const auto oldest = sh.pending.front().lock();
    if (oldest) return oldest->evict();  // takes itself off the list
    sh.pending.pop_front();
  };
  while (!sh.pending.empty() && static_cast<int>(sh.pending.size()) >= sh.cfg.max_pending_connections) evict_oldest();
  if (sh.connections < sh.cfg.max_connections) return true;
  if (sh.pending.empty()) return false;
  evict_oldest();
  return true;
}

template <class Acceptor, class Stream>
void accept_loop(Acceptor& acc, ServerShared& sh) {
  acc.async_accept([&acc, &sh](beast::error_code ec, typename Acceptor::protocol_type::socket sock) {
    if (ec) return;  // closed at shutdown
    const bool room = make_room(sh);
    auto s = std::make_shared<Session<Stream>>(Stream(std::move(sock)), sh);
    s->start(!room);
    accept_loop<Acceptor, Stream>(acc, sh);
  });
}

using LocalStream = beast::basic_stream<local, net::any_io_executor, beast::unlimited_rate_policy>;

}  // namespace

void accept_on(local::acceptor& acc, ServerShared& sh) { accept_loop<local::acceptor, LocalStream>(acc, sh); }
void accept_on(net::ip::tcp::acceptor& acc, ServerShared& sh) {
  accept_loop<net::ip::tcp::acceptor, beast::tcp_stream>(acc, sh);
}

}  // namespace cascade::daemon
