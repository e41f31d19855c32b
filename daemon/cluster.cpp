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
#include <thread>

#include "config/size.h"
#include "planner/report.h"
#include "stage/model.h"
#include "stage/worker.h"
#include "storage/checkpoint.h"

namespace cascade::daemon {
namespace {

constexpr double kStartupGrace = 30;  // seconds a stage may take to register its heartbeat

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

const char* transport_name(planner::Transport t) { return planner::to_string(t); }

// The assignments, one per stage, from the plan's route and edges.
std::vector<stage::Assignment> assignments(const PlannedRun& run, const std::string& job, const std::string& heartbeats,
                                           const std::vector<std::string>& labels) {
  const planner::Plan& plan = run.plan;
  const config::Config& cfg = run.config;
  const int n_stages = static_cast<int>(plan.stages.size());
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<stage::Assignment> out;
  for (const auto& s : plan.stages) {
    stage::Assignment a;
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
        if (s.device.kind == config::DeviceName::Kind::kCuda && tier.kind != config::DeviceName::Kind::kCuda)
          a.streamed_modules.push_back(i);
      }
    }
    a.offload_folder = cfg.placement.offload_folder;
    a.kv_slots = cfg.runtime.max_batch;
    a.max_seq_len = cfg.runtime.max_seq_len;
    a.threads = cfg.runtime.threads_per_stage > 0 ? cfg.runtime.threads_per_stage
                                                  : static_cast<int>(std::max(1u, cores / n_stages));
    a.heartbeat_timeout = cfg.runtime.heartbeat_timeout;
    a.step_timeout = cfg.runtime.step_timeout;
    a.rank_labels = labels;
    a.int8 = cfg.quantization.mode == "int8";
    a.cuda_graphs = cfg.runtime.cuda_graphs;
    a.int8_threshold = cfg.quantization.threshold;
    a.int8_skip = cfg.quantization.skip_modules;
    out.push_back(a);
  }
  // Route position k runs segment k; edge k brings its input, edge k+1 takes its output.
  auto link = [&](size_t e, int peer) {
    const planner::Edge& edge = plan.edges[e];
    return stage::Link{peer, transport_name(edge.transport), "/" + job + "-e" + std::to_string(e),
                       comm::kTagData + static_cast<int>(e)};
  };
  for (size_t k = 0; k < plan.route_ranks.size(); ++k) {
    stage::Assignment& a = out[static_cast<size_t>(plan.route_ranks[k] - 1)];
    a.hops.push_back({plan.route_segments[k].begin, plan.route_segments[k].end, link(k, plan.edges[k].from),
                      link(k + 1, plan.edges[k + 1].to)});
  }
  return out;
}

std::string mb_per_s(uint64_t bytes, double seconds) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << (seconds > 0 ? static_cast<double>(bytes) / 1e6 / seconds : 0.0)
    << " MB/s";
  return s.str();
}

// Stored bytes of the distinct tensors of each stage's modules.
std::vector<uint64_t> stage_source_bytes(const PlannedRun& run) {
  const stage::ModelDescription d = stage::describe(*run.checkpoint);
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

std::string stage_label(const planner::Stage& s) {
  std::string tiers = s.device.str();
  for (const auto& t : s.tiers)
    if (t != s.device) tiers += "+" + t.str();
  return "stage " + std::to_string(s.rank) + " (rank " + std::to_string(s.rank) + ", " + tiers + ")";
}

std::unique_ptr<Cluster> Cluster::start(const PlannedRun& run, const std::string& exe, std::ostream& log, bool trace) {
  const auto launched = Clock::now();
  std::unique_ptr<Cluster> c(new Cluster());
  c->trace_ = trace;
  comm::World& w = comm::World::get();
  c->world_ = &w;
  const planner::Plan& plan = run.plan;
  const int n = static_cast<int>(plan.stages.size());
  c->slots_ = run.config.runtime.max_batch;
  c->max_seq_len_ = run.config.runtime.max_seq_len;
  c->heartbeat_timeout_ = run.config.runtime.heartbeat_timeout;
  c->step_timeout_ = run.config.runtime.step_timeout;
  c->labels_ = {"the coordinator (rank 0)"};
  for (const auto& s : plan.stages) c->labels_.push_back(stage_label(s));
  c->busy_.assign(c->labels_.size(), 0.0);

  log << "cascade: device map\n" << planner::format_plan(run.request.model, plan);
  const std::string job = job_name();
  c->hb_ = comm::Heartbeats::create("/" + job + "-hb", n + 1);
  c->hb_->start(0);
  if (w.size() == 1) {
    log << "cascade: starting " << n << " stage process" << (n > 1 ? "es" : "") << "\n";
    w.spawn(n, exe, {"stage"});
    c->spawned_ = true;
  } else if (w.size() != n + 1) {
    stage::Assignment none;
    none.exit_reason = "wrong process count";
    for (int r = 1; r < w.size(); ++r) {
      none.rank = r;
      w.send(r, comm::kTagAssign, stage::to_json(none).dump(), after(5), nullptr);
    }
    c->failed_ = true;
    throw ClusterError("this plan has " + std::to_string(n) + " stage" + (n > 1 ? "s" : "") +
                       ", so it needs mpirun -np " + std::to_string(n + 1) + " (the coordinator plus one process " +
                       "per stage); it was started with -np " + std::to_string(w.size()));
  }

  try {
    auto as = assignments(run, job, c->hb_->name(), c->labels_);
    for (auto& a : as) a.trace = trace;
    for (const auto& a : as) w.send(a.rank, comm::kTagAssign, stage::to_json(a).dump(), after(10), nullptr);

    // Wait for every stage, printing progress as it arrives.
    std::set<int> waiting;
    for (int r = 1; r <= n; ++r) waiting.insert(r);
    auto alive = [self = c.get()] { self->check_alive(); };
    while (!waiting.empty()) {
      std::vector<uint8_t> msg;
      int from = 0;
      if (!w.try_recv(MPI_ANY_SOURCE, comm::kTagLoad, &msg, &from)) {
        alive();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      const json r = json::parse(msg.begin(), msg.end());
      if (r.value("type", std::string()) == "progress") {
        log << "cascade: " << c->labels_[static_cast<size_t>(from)]
            << " loading: " << config::format_bytes(r["bytes"].get<uint64_t>()) << " / "
            << config::format_bytes(r["total"].get<uint64_t>()) << " ("
            << mb_per_s(r["bytes"].get<uint64_t>(), r["seconds"].get<double>()) << ")\n";
        continue;
      }
      const std::string& label = c->labels_[static_cast<size_t>(from)];
      if (!r.value("ok", false)) {
        throw ClusterError(label + " on " + r.value("host", std::string("?")) +
                           " failed to load: " + r.value("error", std::string("(no message)")));
      }
      StageReport rep;
      rep.rank = from;
      rep.label = label;
      rep.host = r["host"].get<std::string>();
      rep.pid = r["pid"].get<int>();
      rep.seconds = r["seconds"].get<double>();
      rep.source_bytes = r["source_bytes"].get<uint64_t>();
      rep.weight_bytes = r["weight_bytes"].get<uint64_t>();
      rep.zero_copy_bytes = r["zero_copy_bytes"].get<uint64_t>();
      rep.folder_bytes = r["folder_bytes"].get<uint64_t>();
      rep.kv_bytes = r["kv_bytes"].get<uint64_t>();
      const int cores = r.value("cores", 0);
      log << "cascade: " << label << " on " << rep.host << " (pid " << rep.pid << ", " << cores
          << (cores == 1 ? " core" : " cores") << ") ready in " << std::fixed << std::setprecision(2) << rep.seconds
          << " s: " << config::format_bytes(rep.source_bytes) << " of the checkpoint ("
          << mb_per_s(rep.source_bytes, rep.seconds) << "), " << config::format_bytes(rep.weight_bytes)
          << " in memory, " << config::format_bytes(rep.zero_copy_bytes + rep.folder_bytes) << " paged from disk"
          << (r.value("folder_rebuilt", false) ? " (offload folder rebuilt)" : "") << ", KV "
          << config::format_bytes(rep.kv_bytes);
      if (r.value("streamed_bytes", uint64_t{0}) > 0)
        log << ", streams " << config::format_bytes(r["streamed_bytes"].get<uint64_t>()) << " to the GPU per step";
      if (r.contains("upload") && r["upload"].value("bytes", uint64_t{0}) > 0) {
        const json& u = r["upload"];  // where a GPU stage's load time went
        log << "; upload: reading " << u.value("read_s", 0.0) << " s, waiting for DMA " << u.value("dma_wait_s", 0.0)
            << " s, allocating " << u.value("alloc_s", 0.0) << " s, finishing " << u.value("finish_s", 0.0) << " s";
      }
      log << "\n";
      c->reports_.push_back(rep);
      waiting.erase(from);
    }
    std::sort(c->reports_.begin(), c->reports_.end(),
              [](const StageReport& a, const StageReport& b) { return a.rank < b.rank; });
    // Each stage reads only its own tensors: the reports must add up to the checkpoint,
    // plus the tied tensors that more than one stage uses.
    const std::vector<uint64_t> expect = stage_source_bytes(run);
    uint64_t sum = 0, want = 0;
    for (const auto& r : c->reports_) {
      sum += r.source_bytes;
      want += expect[static_cast<size_t>(r.rank - 1)];
      if (r.source_bytes != expect[static_cast<size_t>(r.rank - 1)]) {
        throw ClusterError(r.label + " serves " + std::to_string(r.source_bytes) + " checkpoint bytes, but its " +
                           "modules hold " + std::to_string(expect[static_cast<size_t>(r.rank - 1)]));
      }
    }
    log << "cascade: stages serve " << sum << " checkpoint bytes: the checkpoint's " << run.checkpoint->total_bytes()
        << " + " << (want - run.checkpoint->total_bytes()) << " of tied tensors held by more than one stage\n";

    const size_t last = plan.edges.size() - 1;
    c->to_first_ = comm::mpi_channel(w, plan.edges.front().to, comm::kTagData);
    c->from_last_ = comm::mpi_channel(w, plan.edges.back().from, comm::kTagData + static_cast<int>(last));
    c->to_first_->set_liveness(alive);
    c->from_last_->set_liveness(alive);
    log << "cascade: ready " << std::fixed << std::setprecision(2)
        << std::chrono::duration<double>(Clock::now() - launched).count() << " s after launch (" << n << " stage"
        << (n > 1 ? "s" : "") << " started, loaded and connected)\n";
  } catch (const comm::CommError& e) {
    c->fail(e.what());
  } catch (const ClusterError& e) {
    c->fail(e.what());
  }
  return c;
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
    const json j = json::parse(msg.begin(), msg.end(), nullptr, false);
    if (j.is_object() && from > 0 && static_cast<size_t>(from) < busy_.size())
      busy_[static_cast<size_t>(from)] = j.value("busy", 0.0);
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
    const json e = json::parse(msg.begin(), msg.end(), nullptr, false);
    throw ClusterError(labels_.at(static_cast<size_t>(from)) +
                       " failed: " + (e.is_object() ? e.value("error", std::string("?")) : std::string("?")));
  }
  // Starting a stage (exec, loading LibTorch and CUDA, MPI init) can take seconds on a
  // busy machine before its heartbeat thread runs: until it registers, a stage gets the
  // start-up grace rather than the heartbeat timeout (after that, its pid shows a death at once).
  for (size_t r = 1; r < labels_.size(); ++r)
    hb_->check(static_cast<int>(r), heartbeat_timeout_, labels_[r], std::max(heartbeat_timeout_, kStartupGrace));
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
    if (m.header.kind != comm::StepKind::kResult || m.header.step_id != out.header.step_id) {
      throw ClusterError("expected the result of step " + std::to_string(out.header.step_id) + ", got step " +
                         std::to_string(m.header.step_id) + " kind " + std::to_string(static_cast<int>(m.header.kind)));
    }
    out.ids = m.payload;
    if (out.header.flags & comm::kStepWantLogits) out.logits = from_last_->recv(after(step_timeout_)).payload;
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
