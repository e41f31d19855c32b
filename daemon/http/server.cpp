#include "daemon/http/server.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <thread>

#include "config/config.h"
#include "daemon/http/session.h"
#include "daemon/planning.h"
#include "daemon/scheduler.h"
#include "daemon/startup.h"
#include "daemon/supervisor.h"
#include "planner/report.h"
#ifdef CASCADE_WITH_TOKENIZER
#include "daemon/http/chat_prompt.h"
#include "daemon/tokenizer/tokenizer.h"
#endif

namespace cascade::daemon {

namespace net = boost::asio;
namespace beast = boost::beast;
using local = net::local::stream_protocol;

std::string claim_socket_path(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return "free";
  if (!S_ISSOCK(st.st_mode))
    throw std::runtime_error(path + " exists and is not a socket; choose another server.socket");
  net::io_context ioc;
  local::socket probe(ioc);
  beast::error_code ec;
  probe.connect(local::endpoint(path), ec);
  if (!ec) throw std::runtime_error("a live daemon is already serving on " + path);
  std::filesystem::remove(path);
  return "stale";
}

namespace {

// The sockets the daemon answers on: the Unix socket (0600), and TCP when configured.
// Bound before any stage starts, so a bad path or a taken port fails in a second with
// the path or address named; the socket file goes with the object.
class Listeners {
 public:
  Listeners(net::io_context& ioc, const config::ServerSection& sc) : unix_acc_(ioc), path_(sc.socket) {
    if (path_.size() >= sizeof(sockaddr_un::sun_path)) {
      throw std::runtime_error("server.socket " + path_ + " is " + std::to_string(path_.size()) +
                               " bytes long; a Unix socket path must be under " +
                               std::to_string(sizeof(sockaddr_un::sun_path)) + " bytes");
    }
    const mode_t old = ::umask(0177);  // the socket is created 0600: only this user may connect
    try {
      unix_acc_ = local::acceptor(ioc, local::endpoint(path_));
    } catch (const boost::system::system_error& e) {
      ::umask(old);
      throw std::runtime_error("cannot listen on unix:" + path_ + " (server.socket): " + e.code().message());
    }
    ::umask(old);
    ::chmod(path_.c_str(), 0600);
    if (sc.tcp.empty()) {
      created_ = true;
      return;
    }
    try {
      const size_t colon = sc.tcp.rfind(':');
      const auto addr = net::ip::make_address(sc.tcp.substr(0, colon));
      tcp_acc_.emplace(ioc,
                       net::ip::tcp::endpoint(addr, static_cast<unsigned short>(std::stoi(sc.tcp.substr(colon + 1)))));
    } catch (const boost::system::system_error& e) {
      std::filesystem::remove(path_);  // the destructor will not run: leave nothing behind
      throw std::runtime_error("cannot listen on tcp:" + sc.tcp + " (server.tcp): " + e.code().message());
    }
    created_ = true;
  }
  ~Listeners() {
    if (created_) std::filesystem::remove(path_);
  }
  void accept(ServerShared& sh) {
    accept_on(unix_acc_, sh);
    if (tcp_acc_) accept_on(*tcp_acc_, sh);
  }
  void close() {
    beast::error_code ignore;
    unix_acc_.close(ignore);
    if (tcp_acc_) tcp_acc_->close(ignore);
  }

 private:
  local::acceptor unix_acc_;
  std::optional<net::ip::tcp::acceptor> tcp_acc_;
  std::string path_;
  bool created_ = false;
};

// Stops serving: no new connections, in-flight requests finish within the grace, then,
// once the scheduler thread is done and the last writes drained, Asio stops. Called on
// SIGTERM/SIGINT and when the stages failed for good. Asio thread only.
struct Drain {
  net::io_context& ioc;
  Listeners& listeners;
  Scheduler& scheduler;
  const std::atomic<bool>& sched_done;
  ServerShared& sh;
  std::ostream& log;

  void operator()(const std::string& why) const {
    if (sh.stopping.exchange(true)) return;
    log << "cascade: " << why << std::endl;
    listeners.close();
    scheduler.stop(std::chrono::duration<double>(sh.cfg.shutdown_grace));
    auto poll = std::make_shared<net::steady_timer>(ioc);
    auto check = std::make_shared<std::function<void(beast::error_code)>>();
    *check = [this, poll, check](beast::error_code) {
      if (!sched_done) {
        poll->expires_after(std::chrono::milliseconds(20));
        poll->async_wait(*check);
        return;
      }
      poll->expires_after(std::chrono::milliseconds(300));
      poll->async_wait([&ioc = ioc, poll, check](beast::error_code) {
        ioc.stop();
        *check = nullptr;  // break the cycle
      });
    };
    (*check)({});
  }
};

}  // namespace

int serve(const ServeOptions& opts, std::ostream& log) {
  ::signal(SIGPIPE, SIG_IGN);
  PlannedRun run = plan_run(config::resolve_config(opts.config_file, opts.model_dir, opts.overrides), "", &log);
  const config::ServerSection sc = run.config.server;
  const std::string claim = claim_socket_path(sc.socket);  // before loading anything
  if (claim == "stale") log << "cascade: removed a stale socket file " << sc.socket << "\n";

  net::io_context ioc;
  Listeners listeners(ioc, sc);  // before loading anything: a bad address fails now

  ServerShared sh;
  sh.cfg = sc;
  sh.model_name = std::filesystem::path(run.config.model.path).filename().string();
  sh.device_map = planner::plan_json(run.request.model, run.plan);
  sh.limits = {run.description.config.vocab_size, run.config.runtime.max_seq_len, sc.max_tokens,
               run.config.runtime.max_batch, run.description.config.encoder_decoder()};
#ifdef CASCADE_WITH_TOKENIZER
  if (std::ifstream(run.config.model.path + "/tokenizer.json").good()) sh.tok = Tokenizer::load(run.config.model.path);
  sh.chat = ChatSetup::load(run.config.model.path, sh.tok.get(), log);
#endif

  Started started = start_stages(std::move(run), log);
  SchedulerOptions so = scheduler_options(started, started.run.config.runtime.mode);
  so.max_queue = sc.max_queue;
  auto supervisor = std::make_shared<Supervisor>(std::move(started), log, SupervisorOptions{sc.max_restarts});
  so.stage_busy = [s = supervisor.get()] { return s->stage_busy(); };
  sh.supervisor = supervisor.get();
  Scheduler scheduler(supervisor, sh.tok, so, &sh.metrics);
  sh.scheduler = &scheduler;

  listeners.accept(sh);
  log << "cascade: serving " << sh.model_name << " on unix:" << sc.socket
      << (sc.tcp.empty() ? "" : " and tcp:" + sc.tcp) << std::endl;
  std::atomic<bool> sched_done{false};
  const Drain drain{ioc, listeners, scheduler, sched_done, sh, log};
  std::thread sched([&] {
    scheduler.run();
    sched_done = true;
    // The scheduler only stops by itself when the stages failed for good.
    if (scheduler.failed()) net::post(ioc, [&] { drain("the stages failed and were not restarted: stopping"); });
  });
  auto work = net::make_work_guard(ioc);  // Asio runs until shutdown completes, even with no connection open
  net::signal_set signals(ioc, SIGTERM, SIGINT);
  signals.async_wait([&](beast::error_code ec, int sig) {
    if (ec) return;
    std::ostringstream why;
    why << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << ": finishing in-flight requests (grace " << sh.cfg.shutdown_grace
        << " s)";
    drain(why.str());
  });
  for (;;) {  // an exception out of a handler costs that connection, never the daemon
    try {
      ioc.run();
      break;
    } catch (const std::exception& e) {
      log << "cascade serve: error in a connection handler (connection dropped): " << e.what() << std::endl;
    }
  }
  if (sched.joinable()) sched.join();
  int rc = 0;
  if (scheduler.failed()) {
    log << "cascade serve: exiting with an error: " << scheduler.failure() << "\n";
    rc = 1;
  } else {
    try {
      supervisor->shutdown();
    } catch (const std::exception& e) {
      log << "cascade serve: stopping the stages: " << e.what() << "\n";
      rc = 1;
    }
  }
  log << "cascade: stopped" << std::endl;
  return rc;
}

}  // namespace cascade::daemon
