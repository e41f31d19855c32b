// Supervisor: keeps `cascade serve`'s stages running (DESIGN §6; issue 19, item 5).
//
// An Executor over the current Cluster. When a step or an idle check fails (a stage
// exited, stalled past runtime.heartbeat_timeout or reported an error) the Cluster has
// already stopped every stage and the scheduler has failed the requests they held with
// a 503. recover() then logs the failure on a line of its own, naming the stage, and —
// when this process spawned the stages and fewer than `max_restarts` restarts happened
// in the last `window` seconds — starts them again from the same plan and waits until
// they are loaded and connected. Stages that mpirun started cannot be replaced from
// here: recover() says so and returns false, and the daemon exits non-zero so that
// whatever supervises mpirun can start the job again.
//
// Ownership: owns the plan and the current Cluster (replaced on a restart).
// Thread-safety: submit/next/check/recover/shutdown/stage_busy on the scheduler thread
// (one at a time); state(), stages() and restarts() from any thread.
#pragma once

#include <chrono>
#include <deque>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/cluster.h"
#include "daemon/executor.h"
#include "daemon/startup.h"

namespace cascade::daemon {

struct SupervisorOptions {
  int max_restarts = 5;  // restarts allowed within `window`; 0 = never restart
  double window = 3600;  // seconds
};

class Supervisor : public Executor {
 public:
  enum class State { kReady, kRecovering, kFailed };

  Supervisor(Started started, std::ostream& log, SupervisorOptions opts);

  void submit(const comm::StepHeader& h, const at::Tensor& ids) override;
  StepOutput next() override;
  void check() override;
  bool recover(const std::string& why) override;
  int64_t kv_slots() const override { return slots_; }
  int64_t max_seq_len() const override { return max_seq_len_; }
  bool feeds_sampled() const override { return feeds_sampled_; }  // a restart keeps the plan

  // Stops the stages of a healthy run (see Cluster::shutdown).
  void shutdown();
  std::vector<double> stage_busy() const;

  State state() const;
  std::vector<StageReport> stages() const;  // as the current stages reported when ready
  int restarts() const;

 private:
  Cluster& cluster() const;
  Started started_;
  std::ostream& log_;
  SupervisorOptions opts_;
  int64_t slots_ = 0, max_seq_len_ = 0;
  bool feeds_sampled_ = false;
  std::deque<std::chrono::steady_clock::time_point> recent_;  // restarts within the window
  mutable std::mutex mu_;                                     // guards what follows
  State state_ = State::kReady;
  std::vector<StageReport> reports_;
  int restarts_ = 0;
};

const char* to_string(Supervisor::State s);

}  // namespace cascade::daemon
