// The planner's cost model (plan.h, predicted_step_seconds): a decode step simulated
// along a plan's route from the request's rates. Kept apart from the fill: plan.cpp asks
// it for every finished plan's step time, and offload_compute "auto" and the hybrid keep
// the plan it predicts fastest.
#include <algorithm>
#include <vector>

#include "planner/plan.h"

namespace cascade::planner {

using config::DeviceName;
using Kind = DeviceName::Kind;

namespace {

// The bytes a CPU stage reads for module `m` in a step of max_batch tokens (an expert
// block's chosen experts, at most all of them; an embedding's few rows count as none).
double cpu_read_bytes(const PlanRequest& r, const ModuleInfo& m) {
  if (m.kind == ModuleKind::kEmbedding) return 0;
  return std::min(static_cast<double>(m.weight_bytes()), m.read_bytes() * static_cast<double>(r.max_batch));
}

// A CPU stage's time for module `m` in a step of max_batch tokens.
// beside_copies: the step streams weights to a GPU, whose copies share the host's memory.
double cpu_seconds(const PlanRequest& r, const ModuleInfo& m, bool beside_copies) {
  const double tokens = static_cast<double>(r.max_batch);
  const double read = cpu_read_bytes(r, m);
  double rate = m.int8 && r.cpu_compute_int8 > 0 ? r.cpu_compute_int8 : r.cpu_compute;
  if (beside_copies && r.cpu_compute_shared > 0) rate *= r.cpu_compute_shared / r.cpu_compute;
  const double flops = beside_copies && r.cpu_flops_shared > 0 ? r.cpu_flops_shared : r.cpu_flops;
  return std::max(read / rate, tokens * m.flops_per_token / flops);
}

// The copy engine and the disk tier's readers of a stage that streams, across the
// simulated steps (predicted_step_seconds).
class StreamTimeline {
 public:
  // slots: the plan's (Plan::stream_slots; the request's may say "auto").
  StreamTimeline(const PlanRequest& r, size_t streamed, int slots)
      : r_(r),
        slots_(static_cast<size_t>(std::max(slots, 2))),
        started_(streamed, 0.0),
        copied_(streamed, false),
        buffer_free_(static_cast<size_t>(r.staging_buffer_count()), 0.0) {}

  // Streamed module number k (route order) of `bytes` from `tier`, wanted by the GPU at
  // `t`: returns when it starts computing.
  double start(size_t k, double bytes, const DeviceName& tier, double t) {
    const size_t n = started_.size(), slots = slots_;
    if (n <= slots && copied_[k]) return started_[k] = t;  // still in its slot from the step before
    copied_[k] = true;
    // Its slot is free once the module `slots` places before it has computed, taken as
    // when the one after that starts (with two slots: the module before k).
    const size_t ahead = std::min(slots - 1, n - 1);
    double copy_from = std::max(ahead > 0 ? started_[(k + n - ahead) % n] : 0.0, copy_end_);
    if (tier.kind == Kind::kDisk) {
      // The module `back` places before k (cyclically) is the first whose start stages k.
      const size_t back = std::min(buffer_free_.size(), n - 1);
      const double staged_from = started_[(k + n - back) % n];
      double& buffer = *std::min_element(buffer_free_.begin(), buffer_free_.end());
      read_end_ = std::max({read_end_, staged_from, buffer}) + bytes / r_.disk_read;
      copy_from = std::max(copy_from, read_end_);
      copy_end_ = copy_from + bytes / r_.pinned_h2d;
      buffer = copy_end_;
    } else {
      copy_end_ = copy_from + bytes / r_.pinned_h2d;
    }
    return started_[k] = std::max(t, copy_end_);
  }

 private:
  const PlanRequest& r_;
  size_t slots_;
  double copy_end_ = 0;              // the copy engine's last copy
  double read_end_ = 0;              // the readers' last read
  std::vector<double> started_;      // per streamed module: when it last started computing
  std::vector<bool> copied_;         // per streamed module: copied in an earlier step
  std::vector<double> buffer_free_;  // per staging buffer: when its last copy ended
};

}  // namespace

double predicted_step_seconds(const PlanRequest& r, const Plan& p) {
  const auto& mods = r.model.modules;
  auto streamed = [&](const DeviceName& on, int64_t i) {
    return on.is_gpu() && !p.module_device[static_cast<size_t>(i)].is_gpu() &&
           mods[static_cast<size_t>(i)].kind != ModuleKind::kEmbedding;
  };
  size_t n_streamed = 0;
  for (size_t k = 0; k < p.route_segments.size(); ++k)
    for (int64_t i = p.route_segments[k].begin; i < p.route_segments[k].end; ++i)
      n_streamed += streamed(p.stages[static_cast<size_t>(p.route_ranks[k] - 1)].device, i);
  StreamTimeline stream(r, std::max<size_t>(n_streamed, 1), p.stream_slots);
  double host_bytes = 0;    // one step's reads of host memory, by CPU stages and by streaming copies
  double stream_bytes = 0;  // one step's streamed bytes
  double t = 0, first_end = 0;
  for (int step = 0; step < 2; ++step) {
    size_t next_streamed = 0;
    for (size_t k = 0; k < p.route_segments.size(); ++k) {
      const DeviceName& on = p.stages[static_cast<size_t>(p.route_ranks[k] - 1)].device;
      t += kHopSeconds;
      for (int64_t i = p.route_segments[k].begin; i < p.route_segments[k].end; ++i) {
        const ModuleInfo& m = mods[static_cast<size_t>(i)];
        if (m.kind == ModuleKind::kEmbedding) continue;  // a few rows: no time
        const DeviceName& tier = p.module_device[static_cast<size_t>(i)];
        const double w = static_cast<double>(m.weight_bytes());
        if (!on.is_gpu()) {  // disk-tier bytes come off the disk (or page cache) either way
          t += std::max(cpu_seconds(r, m, n_streamed > 0), tier.kind == Kind::kDisk ? w / r.disk_read : 0.0);
          if (step == 0) host_bytes += cpu_read_bytes(r, m);
        } else if (tier.is_gpu()) {
          t += w / r.gpu_compute;
        } else {
          if (step == 0) host_bytes += w, stream_bytes += w;
          t = stream.start(next_streamed++, w, tier, t) + w / r.gpu_compute;
        }
      }
    }
    t += kHopSeconds;  // the logits back to the coordinator
    if (step == 0) first_end = t;
  }
  // Copies that run ahead into the next step fall outside the second step's span, but
  // one copy engine moves every streamed byte each step (unless all stay in the slots).
  const double copies = n_streamed > static_cast<size_t>(p.stream_slots) ? stream_bytes / r.pinned_h2d : 0.0;
  return std::max({t - first_end, copies, r.host_read > 0 ? host_bytes / r.host_read : 0.0});
}

}  // namespace cascade::planner
