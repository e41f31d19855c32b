// The planner's device fill, inside the library (plan.h is its public face): the
// Ledger that charges modules to devices, and the fill that places them in accelerate's
// order, by a manual device_map, balanced, or pipeline-balanced. make_plan()
// (plan.cpp) fills, then adds stages, routes and the offload split.
//
// Thread-safety: plain values and pure functions; a Ledger is used by one thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config/size.h"
#include "planner/plan.h"

namespace cascade::planner::detail {

using config::DeviceName;
using Kind = DeviceName::Kind;
constexpr uint64_t kInf = std::numeric_limits<uint64_t>::max();

// The prefill chunk the activation estimate assumes (long prompts are cut into chunks).
constexpr int64_t kPrefillChunk = 512;

inline std::string gib(uint64_t b) { return config::format_bytes(b); }

// The GPU that offload_compute streams to ("cuda:N" or "cpu+cuda:N"), if any.
inline std::optional<DeviceName> stream_gpu(const std::string& offload_compute) {
  return config::parse_offload_compute(offload_compute).gpu;
}
inline bool is_hybrid(const std::string& offload_compute) {
  return config::parse_offload_compute(offload_compute).hybrid;
}

// Device fill order: GPUs, then CPUs, then disk, each by index (accelerate's order).
std::vector<DeviceName> fill_order(const std::vector<DeviceBudget>& budgets);

// Everything the fill needs to charge a module to devices.
class Ledger {
 public:
  explicit Ledger(const PlanRequest& r) : req_(&r) {
    for (const auto& b : r.budgets) cap_[b.device.str()] = b.bytes ? *b.bytes : kInf;
    for (const auto& d : fill_order(r.budgets)) {
      if (d.kind == Kind::kCpu) last_cpu_ = d;
    }
    offload_gpu_ = stream_gpu(r.offload_compute);
  }

  // Where a module whose weights live on `tier` computes: GPUs and extra CPU stages
  // compute where they live; the offload stage (the last CPU device and disk) computes
  // on offload_compute.
  DeviceName compute_of(const DeviceName& tier) const {
    if (!is_offload_tier(tier)) return tier;
    return offload_gpu_ ? *offload_gpu_ : last_cpu_;
  }
  bool is_offload_tier(const DeviceName& tier) const { return tier.kind == Kind::kDisk || tier == last_cpu_; }

  uint64_t cap(const DeviceName& d) const {
    const auto it = cap_.find(d.str());
    return it == cap_.end() ? kInf : it->second;
  }
  void set_cap(const DeviceName& d, uint64_t c) { cap_[d.str()] = c; }

  uint64_t kv_of(const ModuleInfo& m) const {
    return m.kv_bytes_per_token * static_cast<uint64_t>(req_->max_batch) * static_cast<uint64_t>(req_->max_seq_len);
  }

  uint64_t activations(bool holds_head) const {
    const ModelDescriptor& m = req_->model;
    const int64_t chunk = std::min<int64_t>(req_->max_seq_len, kPrefillChunk);
    const uint64_t tokens = static_cast<uint64_t>(std::max<int64_t>(req_->max_batch, chunk));
    uint64_t b = tokens * m.act_bytes_per_token;
    b += 4ull * m.score_heads * chunk * req_->max_seq_len;       // one sequence's float32 attention scores
    if (holds_head) b += 4ull * req_->max_batch * m.vocab_size;  // float32 logits
    return b;
  }

  // What placing module `i` on `tier` adds, per device.
  std::map<std::string, DeviceUsage> charge(int64_t i, const DeviceName& tier) const {
    const ModuleInfo& m = req_->model.modules[i];
    std::map<std::string, DeviceUsage> add;
    DeviceUsage& t = add[tier.str()];
    const auto have = tensors_.find(tier.str());
    for (const auto& ts : m.tensors) {
      if (have == tensors_.end() || !have->second.count(ts.name)) t.weights += ts.bytes;
    }
    const DeviceName c = compute_of(tier);
    DeviceUsage& cu = add[c.str()];
    if (!(kv_precharged_ && c == *kv_precharged_)) cu.kv += kv_of(m);
    const bool head = m.kind == ModuleKind::kHead;
    const auto it = usage_.find(c.str());
    const bool active = it != usage_.end() && it->second.activations > 0;
    if (!active)
      cu.activations = activations(head);
    else if (head && !holds_head_.count(c.str()))
      cu.activations = activations(true) - activations(false);
    return add;
  }

  // The first device whose cap `add` would break, if any (by value: `add` is often a
  // temporary).
  std::optional<std::string> overflow(const std::map<std::string, DeviceUsage>& add) const {
    for (const auto& [dev, a] : add) {
      const uint64_t used = usage_.count(dev) ? usage_.at(dev).total() : 0;
      const auto it = cap_.find(dev);
      const uint64_t c = it == cap_.end() ? kInf : it->second;
      if (dev == "disk" && c == kInf) continue;
      if (used + a.total() > c) return dev;
    }
    return std::nullopt;
  }

  void place(int64_t i, const DeviceName& tier) {
    const auto add = charge(i, tier);
    for (const auto& [dev, a] : add) {
      DeviceUsage& u = usage_[dev];
      u.weights += a.weights;
      u.kv += a.kv;
      u.activations += a.activations;
    }
    const ModuleInfo& m = req_->model.modules[i];
    for (const auto& ts : m.tensors) tensors_[tier.str()].insert(ts.name);
    if (m.kind == ModuleKind::kHead) holds_head_.insert(compute_of(tier).str());
  }

  void reserve_staging(const DeviceName& d, uint64_t bytes) { usage_[d.str()].staging += bytes; }
  // Charges the KV cache of every module to `d` up front, and none when they are placed:
  // when offloaded layers stream to d, every layer computed there keeps its KV there
  // whichever way the fill splits resident and streamed layers. (Layers resident on
  // another GPU are counted on both: conservative.)
  void precharge_kv(const DeviceName& d) {
    for (const auto& m : req_->model.modules) usage_[d.str()].kv += kv_of(m);
    kv_precharged_ = d;
  }
  // Hybrid offload: offloaded module i, charged to the GPU it would stream to, computes
  // on the CPU instead; its KV cache and the CPU stage's activations move there.
  void compute_on_cpu(int64_t i) {
    const ModuleInfo& m = req_->model.modules[i];
    usage_[offload_gpu_->str()].kv -= kv_of(m);
    DeviceUsage& c = usage_[last_cpu_.str()];
    c.kv += kv_of(m);
    const bool head = m.kind == ModuleKind::kHead;
    if (c.activations == 0)
      c.activations = activations(head);
    else if (head && holds_head_.insert(last_cpu_.str()).second)
      c.activations += activations(true) - activations(false);
    if (head) holds_head_.insert(last_cpu_.str());
  }
  std::map<std::string, DeviceUsage>& usage() { return usage_; }
  const std::optional<DeviceName>& offload_gpu() const { return offload_gpu_; }
  const DeviceName& last_cpu() const { return last_cpu_; }

 private:
  const PlanRequest* req_;
  std::map<std::string, uint64_t> cap_;
  std::map<std::string, DeviceUsage> usage_;
  std::map<std::string, std::set<std::string>> tensors_;  // tensors already on a tier
  std::set<std::string> holds_head_;
  DeviceName last_cpu_{Kind::kCpu, 0};
  std::optional<DeviceName> offload_gpu_;
  std::optional<DeviceName> kv_precharged_;
};

// The host's pinned staging buffers of a stream that reads disk-tier modules: one slot
// (the largest streamed module) each, as WeightStream allocates them.
uint64_t host_staging_bytes(const PlanRequest& r, uint64_t slot);
// Throws PlanError where the offload CPU's budget cannot hold the host's staging buffers.
void no_room_for_staging(const PlanRequest& r, const Ledger& l, uint64_t slot);
// One device per module from a manual device_map; throws PlanError naming a bad key.
std::vector<DeviceName> resolve_manual(const PlanRequest& r);
// Strategy placement (no manual map) into `out`, charging `l`: in execution order, or
// with the expert blocks (experts = auto | offload) and, with `embedding_last`, the
// embedding after the rest. Throws PlanError naming the module that does not fit.
void fill(const PlanRequest& r, const std::vector<DeviceName>& order, const std::vector<DeviceName>& main, Ledger& l,
          std::vector<DeviceName>& out, bool embedding_last);
// Throws PlanError on a request no fill can serve (no modules, no budgets, ...).
void validate(const PlanRequest& r);

}  // namespace cascade::planner::detail
