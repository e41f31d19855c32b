#include "daemon/cluster.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <ostream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "comm/control.h"
#include "comm/cores.h"
#include "config/size.h"
#include "planner/report.h"
#include "stage/model.h"
#include "storage/checkpoint.h"

namespace cascade::daemon {
namespace {

constexpr double kStartupGrace = 30;  // seconds a stage may take to register its heartbeat
// Seconds MPI_Comm_spawn may take to start the stage processes (exec, LibTorch, MPI
// start: 0.3-2 s on the 2-core development VM); past it Open MPI's runtime is taken as broken.
constexpr double kSpawnTimeout = 60;

using comm::Clock;
using nlohmann::json;

Clock::time_point after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

std::string job_name() {
  std::random_device rd;
  char buf[64];
  std::snprintf(buf, sizeof buf, "cascade-%d-%08x", static_cast<int>(::getpid()), rd());
  return buf;
}

comm::Transport transport_of(planner::Transport t) {
  switch (t) {
    case planner::Transport::kNccl:
      return comm::Transport::kNccl;
    case planner::Transport::kShm:
      return comm::Transport::kShm;
    case planner::Transport::kMpi:
      return comm::Transport::kMpi;
  }
  return comm::Transport::kMpi;
}

bool on_gpu(const planner::Stage& s) { return s.device.is_gpu(); }

// Intra-op threads of stage `s` when threads_per_stage is unset. CPU-computing stages
// share the cores but one per GPU-computing stage (a GPU stage's host thread launches
// kernels and waits for its peers; its ATen CPU work is rare), so a hybrid offload's CPU
// stage is not cut to a third of the machine by its two GPU neighbours.
int default_threads(const planner::Plan& plan, const planner::Stage& s, unsigned cores) {
  const unsigned gpu = static_cast<unsigned>(std::count_if(plan.stages.begin(), plan.stages.end(), on_gpu));
  const unsigned cpu = static_cast<unsigned>(plan.stages.size()) - gpu;
  if (on_gpu(s) || cpu == 0) return static_cast<int>(std::max(1u, cores / static_cast<unsigned>(plan.stages.size())));
  return static_cast<int>(std::max(1u, (cores > gpu ? cores - gpu : 1u) / cpu));
}

// runtime.pin_cores: each CPU-computing stage gets as many of `allowed` as its threads,
// in rank order, so that no two of them share a core; GPU stages share the cores left
// (their host threads launch kernels and wait), their threads capped to them. Nothing is
// pinned where the CPU stages' threads would leave no core, or too few, for that.
// Assignments in plan.stages' order.
void pin_cores(const planner::Plan& plan, const std::vector<int>& allowed, std::vector<comm::Assignment>& out) {
  size_t need = 0, gpu = 0;
  for (size_t i = 0; i < plan.stages.size(); ++i) {
    if (on_gpu(plan.stages[i]))
      ++gpu;
    else
      need += static_cast<size_t>(std::max(1, out[i].threads));
  }
  if (need > allowed.size() || (gpu > 0 && need >= allowed.size())) return;
  size_t next = 0;
  for (size_t i = 0; i < plan.stages.size(); ++i) {
    if (on_gpu(plan.stages[i])) continue;
    const size_t n = static_cast<size_t>(std::max(1, out[i].threads));
    out[i].cores.assign(allowed.begin() + static_cast<std::ptrdiff_t>(next),
                        allowed.begin() + static_cast<std::ptrdiff_t>(next + n));
    next += n;
  }
  const std::vector<int> rest(allowed.begin() + static_cast<std::ptrdiff_t>(next), allowed.end());
  for (size_t i = 0; i < plan.stages.size(); ++i) {
    if (!on_gpu(plan.stages[i])) continue;
    out[i].cores = rest;
    out[i].threads = std::min(out[i].threads, static_cast<int>(rest.size()));
  }
}

}  // namespace

std::vector<comm::Assignment> stage_assignments(const PlannedRun& run, const std::string& job,
                                                const std::string& heartbeats, const std::vector<std::string>& labels,
                                                bool trace, bool one_host) {
  const planner::Plan& plan = run.plan;
  const config::Config& cfg = run.config;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<comm::Assignment> out;
  for (const auto& s : plan.stages) {
    comm::Assignment a;
    a.rank = s.rank;
    a.label = labels[static_cast<size_t>(s.rank)];
    a.job = job;
    a.heartbeats = heartbeats;
    a.model_dir = cfg.model.path;
    a.dtype = storage::dtype_name(run.dtype);
    a.device = s.device.str();
    for (const auto& seg : s.segments) {
      for (int64_t i = seg.begin; i < seg.end; ++i) {
        a.modules.push_back(i);
        const config::DeviceName& tier = plan.module_device[static_cast<size_t>(i)];
        if (tier.kind == config::DeviceName::Kind::kDisk) a.disk_modules.push_back(i);
        // offload_compute = cuda:N: the offload stage computes on the GPU, its weights stream in.
        if (s.device.is_gpu() && !tier.is_gpu()) a.streamed_modules.push_back(i);
      }
    }
    a.offload_folder = cfg.placement.offload_folder;
    a.stream_slots = plan.stream_slots;
    a.threads = cfg.runtime.threads_per_stage > 0 ? cfg.runtime.threads_per_stage : default_threads(plan, s, cores);
    a.trace = trace;
    a.runtime = cfg.runtime;
    a.quantization = cfg.quantization;
    a.rank_labels = labels;
    out.push_back(a);
  }
  // The coordinator knows its own host's cores only.
  if (cfg.runtime.pin_cores && one_host) pin_cores(plan, comm::allowed_cores(), out);
  // Route position k runs segment k; edge k brings its input, edge k+1 takes its output.
  auto link = [&](size_t e, int peer) {
    const planner::Edge& edge = plan.edges[e];
    return comm::Link{peer, transport_of(edge.transport), "/" + job + "-e" + std::to_string(e),
                      comm::kTagData + static_cast<int>(e)};
  };
  for (size_t k = 0; k < plan.route_ranks.size(); ++k) {
    comm::Assignment& a = out[static_cast<size_t>(plan.route_ranks[k] - 1)];
    a.hops.push_back({plan.route_segments[k].begin, plan.route_segments[k].end, link(k, plan.edges[k].from),
                      link(k + 1, plan.edges[k + 1].to)});
  }
  return out;
}

namespace {

std::string mb_per_s(uint64_t bytes, double seconds) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << (seconds > 0 ? static_cast<double>(bytes) / 1e6 / seconds : 0.0)
    << " MB/s";
  return s.str();
}

// Stored bytes of the distinct tensors of each stage's modules.
std::vector<uint64_t> stage_source_bytes(const PlannedRun& run) {
  const stage::ModelDescription& d = run.description;
  std::vector<uint64_t> out;
  for (const auto& s : run.plan.stages) {
    std::set<std::string> names;
    for (const auto& seg : s.segments)
      for (int64_t i = seg.begin; i < seg.end; ++i)
        names.insert(d.modules[static_cast<size_t>(i)].tensors.begin(),
                     d.modules[static_cast<size_t>(i)].tensors.end());
    uint64_t b = 0;
    for (const auto& n : names) b += run.checkpoint->info(n).nbytes();
    out.push_back(b);
  }
  return out;
}

}  // namespace

std::string ready_line(const std::string& label, const comm::StageReady& r) {
  std::ostringstream o;
  o << label << " on " << r.host << " (pid " << r.pid << ", " << r.cores << (r.cores == 1 ? " core" : " cores")
    << (r.core_list.empty() ? "" : ": " + r.core_list) << ") ready in " << std::fixed << std::setprecision(2)
    << r.seconds << " s: " << config::format_bytes(r.source_bytes) << " of the checkpoint ("
    << mb_per_s(r.source_bytes, r.seconds) << "), " << config::format_bytes(r.weight_bytes) << " in memory, "
    << config::format_bytes(r.zero_copy_bytes + r.folder_bytes) << " paged from disk"
    << (r.folder_rebuilt ? " (offload folder rebuilt)" : "") << ", KV " << config::format_bytes(r.kv_bytes);
  if (r.streamed_bytes > 0)
    o << ", streams " << config::format_bytes(r.streamed_bytes) << " to the GPU per step through " << r.stream_slots
      << " slots";
  if (r.upload.bytes > 0) {  // where a GPU stage's load time went
    o << "; upload: reading " << r.upload.read_s << " s, waiting for DMA " << r.upload.dma_wait_s << " s, allocating "
      << r.upload.alloc_s << " s, finishing " << r.upload.finish_s << " s";
  }
  return o.str();
}

namespace {

// "stages ready 0.98 s after start: spawning 0.25 s, then the last one ready, stage 1
// (...), took 0.72 s: CUDA start 0.21 s, loading 0.50 s, connecting 0.01 s"
std::string startup_line(const std::vector<StageReport>& reports, Clock::time_point started,
                         Clock::time_point spawned) {
  auto secs = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  std::ostringstream o;
  o << std::fixed << std::setprecision(2) << "stages ready " << secs(Clock::now() - started)
    << " s after start: spawning " << secs(spawned - started) << " s";
  const auto last = std::max_element(reports.begin(), reports.end(),
                                     [](const auto& a, const auto& b) { return a.ready.seconds < b.ready.seconds; });
  if (last == reports.end()) return o.str();
  const comm::StageReady& r = last->ready;
  o << ", then the last one ready, " << last->label << ", took " << r.seconds << " s: ";
  if (r.device_start_s > 0) o << "CUDA start " << r.device_start_s << " s, ";
  o << "loading " << std::max(0.0, r.seconds - r.device_start_s - r.connect_s) << " s, connecting " << r.connect_s
    << " s";
  return o.str();
}

}  // namespace

std::string stage_label(const planner::Stage& s) {
  std::string tiers = s.device.str();
  for (const auto& t : s.tiers)
    if (t != s.device) tiers += "+" + t.str();
  return "stage " + std::to_string(s.rank) + " (rank " + std::to_string(s.rank) + ", " + tiers + ")";
}

std::unique_ptr<Cluster> Cluster::start(const PlannedRun& run, const std::string& exe, std::ostream& log, bool trace) {
  const auto launched = Clock::now();
  std::unique_ptr<Cluster> c(new Cluster());
  const config::RuntimeSection& rt = run.config.runtime;
  c->trace_ = trace;
  c->world_ = &comm::World::get();
  c->slots_ = rt.max_batch;
  c->max_seq_len_ = rt.max_seq_len;
  c->heartbeat_timeout_ = rt.heartbeat_timeout;
  c->step_timeout_ = rt.step_timeout;
  c->labels_ = {"the coordinator (rank 0)"};
  for (const auto& s : run.plan.stages) c->labels_.push_back(stage_label(s));
  c->busy_.assign(c->labels_.size(), 0.0);

  print_plan(run, log);
  const std::string job = job_name();
  c->hb_ = comm::Heartbeats::create("/" + job + "-hb", static_cast<int>(c->labels_.size()));
  c->hb_->start(0);
  c->launch(exe, log);
  const auto spawned = Clock::now();
  try {
    for (const auto& a : stage_assignments(run, job, c->hb_->name(), c->labels_, trace, !c->world_->multi_node()))
      c->world_->send(a.rank, comm::kTagAssign, comm::encode(a), after(10), nullptr);
    c->await_ready(log);
    c->check_sources(run, log);
    c->connect(run.plan);
    log << "cascade: " << startup_line(c->reports_, launched, spawned) << "\n";
  } catch (const comm::CommError& e) {
    c->fail(e.what());
  } catch (const ClusterError& e) {
    c->fail(e.what());
  } catch (const std::invalid_argument& e) {  // a malformed report (comm/control.h)
    c->fail(e.what());
  }
  return c;
}

// Spawns the stage processes, or checks that mpirun started as many as the plan has
// (telling each extra one why it must exit).
void Cluster::launch(const std::string& exe, std::ostream& log) {
  comm::World& w = *world_;
  const int n = static_cast<int>(labels_.size()) - 1;
  if (w.size() == 1 || w.spawned_peers()) {  // alone, or restarting stages it spawned before
    log << "cascade: starting " << n << " stage process" << (n > 1 ? "es" : "") << "\n";
    w.spawn(n, exe, {"stage"}, after(kSpawnTimeout));
    spawned_ = true;
    return;
  }
  if (w.size() == n + 1) return;
  comm::Assignment none;
  none.exit_reason = "wrong process count";
  for (int r = 1; r < w.size(); ++r) {
    none.rank = r;
    w.send(r, comm::kTagAssign, comm::encode(none), after(5), nullptr);
  }
  failed_ = true;
  throw ClusterError("this plan has " + std::to_string(n) + " stage" + (n > 1 ? "s" : "") +
                     ", so it needs mpirun -np " + std::to_string(n + 1) + " (the coordinator plus one process " +
                     "per stage); it was started with -np " + std::to_string(w.size()));
}

// Waits for every stage's ready report, printing load progress as it arrives.
void Cluster::await_ready(std::ostream& log) {
  std::set<int> waiting;
  for (size_t r = 1; r < labels_.size(); ++r) waiting.insert(static_cast<int>(r));
  while (!waiting.empty()) {
    std::vector<uint8_t> msg;
    int from = 0;
    if (!world_->try_recv(MPI_ANY_SOURCE, comm::kTagLoad, &msg, &from)) {
      check_alive();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    const std::string& label = labels_.at(static_cast<size_t>(from));
    const auto report = comm::decode_load(msg);
    if (const auto* p = std::get_if<comm::LoadProgress>(&report)) {
      log << "cascade: " << label << " loading: " << config::format_bytes(p->bytes) << " / "
          << config::format_bytes(p->total) << " (" << mb_per_s(p->bytes, p->seconds) << ")\n";
      continue;
    }
    const auto& r = std::get<comm::StageReady>(report);
    if (!r.ok) throw ClusterError(label + " on " + r.host + " failed to load: " + r.error);
    log << "cascade: " << ready_line(label, r) << "\n";
    reports_.push_back({from, label, r});
    waiting.erase(from);
  }
  std::sort(reports_.begin(), reports_.end(),
            [](const StageReport& a, const StageReport& b) { return a.rank < b.rank; });
}

// Each stage reads only its own tensors: the reports must add up to the checkpoint,
// plus the tied tensors that more than one stage uses.
void Cluster::check_sources(const PlannedRun& run, std::ostream& log) const {
  const std::vector<uint64_t> expect = stage_source_bytes(run);
  uint64_t sum = 0, want = 0;
  for (const auto& r : reports_) {
    const uint64_t e = expect[static_cast<size_t>(r.rank - 1)];
    sum += r.ready.source_bytes;
    want += e;
    if (r.ready.source_bytes != e) {
      throw ClusterError(r.label + " serves " + std::to_string(r.ready.source_bytes) + " checkpoint bytes, but its " +
                         "modules hold " + std::to_string(e));
    }
  }
  log << "cascade: stages serve " << sum << " checkpoint bytes: the checkpoint's " << run.checkpoint->total_bytes()
      << " + " << (want - run.checkpoint->total_bytes()) << " of tied tensors held by more than one stage\n";
}

// The coordinator's ends of the route: to the first stage and from the last.
void Cluster::connect(const planner::Plan& plan) {
  const size_t last = plan.edges.size() - 1;
  feeds_sampled_ = plan.edges.front().to == plan.edges.back().from;
  to_first_ = comm::mpi_channel(*world_, plan.edges.front().to, comm::kTagData);
  from_last_ = comm::mpi_channel(*world_, plan.edges.back().from, comm::kTagData + static_cast<int>(last));
  auto alive = [this] { check_alive(); };
  to_first_->set_liveness(alive);
  from_last_->set_liveness(alive);
}

Cluster::~Cluster() {
  if (!down_ && !failed_ && to_first_) {
    try {
      shutdown();
    } catch (const std::exception&) {
    }
  }
}

void Cluster::poll_stats() const {
  std::vector<uint8_t> msg;
  int from = 0;
  while (world_->try_recv(MPI_ANY_SOURCE, comm::kTagStats, &msg, &from)) {
    if (from <= 0 || static_cast<size_t>(from) >= busy_.size()) continue;
    try {
      busy_[static_cast<size_t>(from)] = comm::decode_stats(msg).busy;
    } catch (const std::invalid_argument&) {  // a lost report only makes busy % stale
    }
  }
}

std::vector<double> Cluster::stage_busy() const {
  if (!failed_) poll_stats();
  return std::vector<double>(busy_.begin() + 1, busy_.end());
}

// Throws when any stage is gone, stalled, or has reported a failed step.
void Cluster::check_alive() const {
  poll_stats();
  std::vector<uint8_t> msg;
  int from = 0;
  if (world_->try_recv(MPI_ANY_SOURCE, comm::kTagError, &msg, &from)) {
    std::string why;
    try {
      why = comm::decode_failure(msg).error;
    } catch (const std::invalid_argument& e) {
      why = e.what();
    }
    throw ClusterError(labels_.at(static_cast<size_t>(from)) + " failed: " + why);
  }
  // Starting a stage (exec, loading LibTorch and CUDA, MPI init) can take seconds on a
  // busy machine before its heartbeat thread runs: until it registers, a stage gets the
  // start-up grace rather than the heartbeat timeout (after that, its pid shows a death at once).
  for (size_t r = 1; r < labels_.size(); ++r)
    hb_->check(static_cast<int>(r), heartbeat_timeout_, labels_[r], std::max(heartbeat_timeout_, kStartupGrace));
}

void Cluster::check() {
  if (failed_ || down_) throw ClusterError("the stages are not running");
  try {
    check_alive();
  } catch (const std::exception& e) {
    fail(e.what());
  }
}

void Cluster::stop_stages() {
  std::vector<pid_t> pids;
  for (size_t r = 1; r < labels_.size(); ++r) {
    const pid_t p = hb_->pid(static_cast<int>(r));
    if (p > 0 && comm::process_running(p)) pids.push_back(p);
  }
  for (pid_t p : pids) ::kill(p, SIGCONT), ::kill(p, SIGTERM);
  const auto deadline = after(2);
  for (pid_t p : pids) {
    while (comm::process_running(p) && Clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (comm::process_running(p)) ::kill(p, SIGKILL);
  }
}

void Cluster::fail(const std::string& what) {
  failed_ = true;
  stop_stages();
  world_->abandon();  // MPI_Finalize could wait on the processes just stopped
  throw ClusterError(what);
}

void Cluster::submit(const comm::StepHeader& h, const at::Tensor& ids) {
  if (failed_ || down_) throw ClusterError("the stages are not running");
  try {
    to_first_->send(h, ids, after(step_timeout_));
  } catch (const std::exception& e) {
    fail(e.what());
  }
  in_flight_.push_back(h);
}

StepOutput Cluster::next() {
  if (in_flight_.empty()) throw ClusterError("next() without a submitted step");
  if (failed_ || down_) throw ClusterError("the stages are not running");
  StepOutput out;
  out.header = in_flight_.front();
  try {
    comm::Message m = from_last_->recv(after(step_timeout_));
    out.ready = std::chrono::steady_clock::now();  // the stages run ahead of next(): received is ready
    if (m.header.kind != comm::StepKind::kResult || m.header.step_id != out.header.step_id) {
      throw ClusterError("expected the result of step " + std::to_string(out.header.step_id) + ", got step " +
                         std::to_string(m.header.step_id) + " kind " + std::to_string(static_cast<int>(m.header.kind)));
    }
    out.ids = m.payload;
    if (out.header.flags & comm::kStepWantLogits) out.logits = from_last_->recv(after(step_timeout_)).payload;
    if (out.header.flags & comm::kStepWantLogprobs) out.logprobs = from_last_->recv(after(step_timeout_)).payload;
  } catch (const std::exception& e) {
    fail(e.what());
  }
  in_flight_.pop_front();
  return out;
}

void Cluster::shutdown() {
  if (down_ || failed_) return;
  try {
    while (!in_flight_.empty()) next();
    comm::StepHeader h;
    h.kind = comm::StepKind::kShutdown;
    to_first_->send(h, at::empty({0}, at::kLong), after(10));
    const comm::Message m = from_last_->recv(after(10));
    if (m.header.kind != comm::StepKind::kShutdown) throw ClusterError("the route did not return the shutdown step");
    for (size_t r = 1; trace_ && r < labels_.size(); ++r) {
      const auto bytes = world_->recv(static_cast<int>(r), comm::kTagTrace, after(30),
                                      [this, r] { hb_->check(static_cast<int>(r), heartbeat_timeout_, labels_[r]); });
      traces_.push_back(json::parse(bytes.begin(), bytes.end()));
    }
    // Stages exit right after passing it on. Spawned ones are waited for here; under
    // mpirun, MPI_Finalize at this process's exit is collective with them instead
    // (waiting here would deadlock against their MPI_Finalize).
    const auto deadline = after(5);
    for (size_t r = 1; spawned_ && r < labels_.size(); ++r) {
      const pid_t p = hb_->pid(static_cast<int>(r));
      while (p > 0 && comm::process_running(p) && Clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  } catch (const std::exception& e) {
    fail(std::string("shutting down: ") + e.what());
  }
  down_ = true;
}

}  // namespace cascade::daemon
