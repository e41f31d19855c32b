// Cluster: the coordinator's handle on the stage processes of a plan (DESIGN §1, §6).
//
// start() gets the processes (MPI_Comm_spawn of `cascade stage` when this process runs
// alone; the ranks mpirun started otherwise, checking that their number matches the
// plan), sends each stage its assignment, prints load progress and time-to-ready per
// stage, and returns when every stage is ready. submit()/next() then move steps along
// the route: token ids to the first stage, sampled ids (and logits) back from the last.
//
// Failures: every wait watches the heartbeat table and the stages' error messages. A
// stage that exits, stalls or fails turns into a ClusterError naming the stage, its
// rank and host; the Cluster then stops the other stages (SIGTERM, then SIGKILL) so no
// process outlives the run. After a failure the Cluster is unusable.
//
// Ownership: owns the heartbeat table and the coordinator's channel ends.
// Thread-safety: one thread drives a Cluster.
#pragma once

#include <iosfwd>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/channel.h"
#include "comm/control.h"
#include "comm/heartbeat.h"
#include "daemon/executor.h"
#include "daemon/planning.h"

namespace cascade::daemon {

class ClusterError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What a stage reported when it became ready (source_bytes: the checkpoint bytes it
// serves, see Model::source_bytes; weight_bytes: held in memory at the compute dtype).
struct StageReport {
  int rank = 0;
  std::string label;
  comm::StageReady ready;
};

class Cluster : public Executor {
 public:
  // `exe`: the cascade binary to spawn. Progress goes to `log`. Throws ClusterError.
  // With `trace`, stages record compute/send/recv spans; shutdown() collects them.
  static std::unique_ptr<Cluster> start(const PlannedRun& run, const std::string& exe, std::ostream& log,
                                        bool trace = false);
  ~Cluster() override;

  void submit(const comm::StepHeader& h, const at::Tensor& ids) override;
  StepOutput next() override;
  // Between steps: throws ClusterError (and stops the stages) when one has exited,
  // stalled or reported a failure, so an idle daemon notices a death too.
  void check() override;
  int64_t kv_slots() const override { return slots_; }
  int64_t max_seq_len() const override { return max_seq_len_; }
  // The route starts and ends at one stage (one that holds the embedding and the head).
  bool feeds_sampled() const override { return feeds_sampled_; }

  // Sends a shutdown step down the route and waits for every stage to pass it on.
  void shutdown();
  const std::vector<StageReport>& stages() const { return reports_; }
  // True when this process spawned the stages (it may start them again); false under mpirun.
  bool spawned() const { return spawned_; }
  // Seconds each stage (by rank - 1) has spent computing, as last reported (~4 Hz).
  std::vector<double> stage_busy() const;
  const std::vector<std::string>& labels() const { return labels_; }
  // After shutdown() of a tracing run: per stage (by rank - 1), spans as
  // [name, step, microbatch, begin_us, end_us] (steady-clock microseconds).
  const std::vector<nlohmann::json>& traces() const { return traces_; }

 private:
  Cluster() = default;
  // The steps of start(), in order.
  void launch(const std::string& exe, std::ostream& log);
  void await_ready(std::ostream& log);
  void check_sources(const PlannedRun& run, std::ostream& log) const;
  void connect(const planner::Plan& plan);
  void check_alive() const;
  void poll_stats() const;
  [[noreturn]] void fail(const std::string& what);
  void stop_stages();

  comm::World* world_ = nullptr;
  std::unique_ptr<comm::Heartbeats> hb_;
  std::unique_ptr<comm::Channel> to_first_, from_last_;
  std::vector<std::string> labels_;  // by rank
  std::vector<StageReport> reports_;
  mutable std::vector<double> busy_;    // by rank; updated whenever messages are polled
  std::vector<nlohmann::json> traces_;  // by rank - 1, after shutdown()
  bool trace_ = false;
  int64_t slots_ = 0, max_seq_len_ = 0;
  double heartbeat_timeout_ = 5, step_timeout_ = 300;
  std::deque<comm::StepHeader> in_flight_;
  bool failed_ = false, down_ = false, spawned_ = false, feeds_sampled_ = false;
};

// Labels a stage for messages: "stage 2 (rank 2, cpu:1)", "stage 3 (rank 3, cpu:0+disk)".
std::string stage_label(const planner::Stage& s);

// The assignments, one per stage in plan.stages' order, from the plan's route and
// edges: `job` names the run's shm segments, `heartbeats` the heartbeat table, `labels`
// every rank (0: the coordinator). With `one_host`, runtime.pin_cores pins the stages.
std::vector<comm::Assignment> stage_assignments(const PlannedRun& run, const std::string& job,
                                                const std::string& heartbeats, const std::vector<std::string>& labels,
                                                bool trace, bool one_host);

// "stage 1 (rank 1, cpu:0) on host (pid 7, 2 cores: 0-1) ready in 0.31 s: ..." for the
// stage `label`'s ready report.
std::string ready_line(const std::string& label, const comm::StageReady& r);

}  // namespace cascade::daemon
