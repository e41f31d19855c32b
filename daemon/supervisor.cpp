#include "daemon/supervisor.h"

#include <iomanip>
#include <ostream>
#include <sstream>

#include "daemon/generate.h"

namespace cascade::daemon {

using Clock = std::chrono::steady_clock;

namespace {

// One line to the log in one write, so lines from other threads do not cut into it.
void log_line(std::ostream& log, const std::string& s) { log << ("cascade: " + s + "\n") << std::flush; }

}  // namespace

const char* to_string(Supervisor::State s) {
  switch (s) {
    case Supervisor::State::kReady:
      return "ok";
    case Supervisor::State::kRecovering:
      return "recovering";
    case Supervisor::State::kFailed:
      return "failed";
  }
  return "failed";
}

Supervisor::Supervisor(Started started, std::ostream& log, SupervisorOptions opts)
    : started_(std::move(started)), log_(log), opts_(opts) {
  slots_ = started_.cluster->kv_slots();
  max_seq_len_ = started_.cluster->max_seq_len();
  feeds_sampled_ = started_.cluster->feeds_sampled();
  reports_ = started_.cluster->stages();
}

// After a restart that failed for good there is no Cluster: every call says so.
Cluster& Supervisor::cluster() const {
  if (!started_.cluster) throw ClusterError("the stages are not running");
  return *started_.cluster;
}

void Supervisor::submit(const comm::StepHeader& h, const at::Tensor& ids) { cluster().submit(h, ids); }
StepOutput Supervisor::next() { return cluster().next(); }
void Supervisor::check() { cluster().check(); }
void Supervisor::shutdown() { cluster().shutdown(); }
std::vector<double> Supervisor::stage_busy() const {
  return started_.cluster ? started_.cluster->stage_busy() : std::vector<double>{};
}

bool Supervisor::recover(const std::string& why) {
  log_line(log_, "stage failure: " + why);
  auto give_up = [&](const std::string& reason) {
    log_line(log_, reason);
    std::lock_guard<std::mutex> l(mu_);
    state_ = State::kFailed;
    return false;
  };
  if (!started_.cluster->spawned()) {
    return give_up(
        "the stages were started by mpirun, so they cannot be restarted from here; exiting with an error so "
        "that whatever runs mpirun can start the job again");
  }
  for (;;) {
    const auto now = Clock::now();
    while (!recent_.empty() && now - recent_.front() > std::chrono::duration<double>(opts_.window)) recent_.pop_front();
    if (static_cast<int>(recent_.size()) >= opts_.max_restarts) {
      std::ostringstream o;
      o << "not restarting the stages: " << recent_.size() << " restart" << (recent_.size() == 1 ? "" : "s")
        << " in the last " << opts_.window << " s already (server.max_restarts = " << opts_.max_restarts << ")";
      return give_up(o.str());
    }
    recent_.push_back(now);
    {
      std::lock_guard<std::mutex> l(mu_);
      state_ = State::kRecovering;
    }
    log_line(log_, "restarting the stages (restart " + std::to_string(recent_.size()) + " of at most " +
                       std::to_string(opts_.max_restarts) + " within " + std::to_string(int(opts_.window)) + " s)");
    try {
      started_.cluster.reset();  // a failed Cluster holds only its heartbeat table now
      started_.cluster = Cluster::start(started_.run, self_exe(), log_);
    } catch (const std::exception& e) {
      log_line(log_, std::string("restarting the stages failed: ") + e.what());
      continue;
    }
    std::ostringstream o;
    o << "stages restarted in " << std::fixed << std::setprecision(2)
      << std::chrono::duration<double>(Clock::now() - now).count() << " s; serving again";
    log_line(log_, o.str());
    std::lock_guard<std::mutex> l(mu_);
    state_ = State::kReady;
    reports_ = started_.cluster->stages();
    ++restarts_;
    return true;
  }
}

Supervisor::State Supervisor::state() const {
  std::lock_guard<std::mutex> l(mu_);
  return state_;
}

std::vector<StageReport> Supervisor::stages() const {
  std::lock_guard<std::mutex> l(mu_);
  return reports_;
}

int Supervisor::restarts() const {
  std::lock_guard<std::mutex> l(mu_);
  return restarts_;
}

}  // namespace cascade::daemon
