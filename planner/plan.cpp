#include "planner/plan.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <limits>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>

#include "config/size.h"

namespace cascade::planner {
namespace {

using config::DeviceName;
using Kind = DeviceName::Kind;
constexpr uint64_t kInf = std::numeric_limits<uint64_t>::max();

// The prefill chunk the activation estimate assumes (long prompts are cut into chunks).
constexpr int64_t kPrefillChunk = 512;

std::string gib(uint64_t b) { return config::format_bytes(b); }

// The GPU that offload_compute streams to ("cuda:N" or "cpu+cuda:N"), if any.
std::optional<DeviceName> stream_gpu(const std::string& offload_compute) {
  return config::parse_offload_compute(offload_compute).gpu;
}
bool is_hybrid(const std::string& offload_compute) { return config::parse_offload_compute(offload_compute).hybrid; }

// Device fill order: GPUs, then CPUs, then disk, each by index (accelerate's order).
std::vector<DeviceName> fill_order(const std::vector<DeviceBudget>& budgets) {
  std::vector<DeviceName> out;
  for (const auto& b : budgets) out.push_back(b.device);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

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
uint64_t host_staging_bytes(const PlanRequest& r, uint64_t slot) {
  return static_cast<uint64_t>(r.staging_buffer_count()) * slot;
}

// Throws where the offload CPU's budget cannot hold the host's staging buffers at all.
void no_room_for_staging(const PlanRequest& r, const Ledger& l, uint64_t slot) {
  const uint64_t need = host_staging_bytes(r, slot), cap = l.cap(l.last_cpu());
  if (need <= cap) return;
  throw PlanError("streaming the disk tier to " + l.offload_gpu()->str() + " needs " +
                  std::to_string(r.staging_buffer_count()) + " pinned staging buffers of " + gib(slot) +
                  " (the largest module) in host memory, " + gib(need) + ", but " + l.last_cpu().str() +
                  "'s budget is " + gib(cap) +
                  ": raise it, set CASCADE_STAGING_BUFFERS lower (2 to 8), or use "
                  "offload_compute = \"cpu\"");
}

uint64_t module_need(const PlanRequest& r, const Ledger& l, int64_t i) {
  return r.model.modules[i].weight_bytes() + l.kv_of(r.model.modules[i]);
}

[[noreturn]] void impossible(const PlanRequest& r, const Ledger& l, int64_t i, const std::string& last_over) {
  const ModuleInfo& m = r.model.modules[i];
  uint64_t largest = 0;
  std::string where = "none";
  for (const auto& b : r.budgets) {
    if (b.device.kind == Kind::kDisk) continue;
    const uint64_t c = b.bytes ? *b.bytes : kInf;
    if (where == "none" || c > largest) {
      largest = c;
      where = b.device.str();
    }
  }
  std::string msg = m.name + " needs " + gib(module_need(r, l, i)) + " (weights " + gib(m.weight_bytes()) + " + KV " +
                    gib(l.kv_of(m)) + " for max_batch " + std::to_string(r.max_batch) + " x max_seq_len " +
                    std::to_string(r.max_seq_len) + ") and does not fit in what is left; ";
  msg += where == "none"
             ? "no compute device has a budget"
             : "the largest compute budget is " + (largest == kInf ? "unlimited" : gib(largest)) + " (" + where + ")";
  if (l.offload_gpu() && last_over == l.offload_gpu()->str()) {
    throw PlanError(msg + "; offloaded layers compute on " + last_over +
                    " (offload_compute), whose KV cache, activations and streaming buffers no longer fit: try "
                    "offload_compute = \"cpu\", or lower max_batch / max_seq_len");
  }
  bool has_disk = false;
  for (const auto& b : r.budgets) has_disk |= b.device.kind == Kind::kDisk;
  if (!has_disk) msg += "; add \"disk\" to max_memory to offload, or lower max_batch / max_seq_len";
  throw PlanError(msg);
}

// accelerate's get_balanced_memory, with KV included in the sizes: every main device
// but the last is capped at an even share plus a buffer of 1.25 x max(largest decoder
// layer, mean module) (accelerate: the no-split block or the mean leaf), and
// balanced_low_0 gives GPU 0 only what the others cannot hold.
void balance_caps(const PlanRequest& r, Ledger& l, const std::vector<DeviceName>& main, bool low_zero) {
  if (main.size() < 2) return;
  uint64_t total = 0, largest = 0;
  for (size_t i = 0; i < r.model.modules.size(); ++i) {
    const uint64_t s = module_need(r, l, static_cast<int64_t>(i));
    total += s;
    const ModuleKind k = r.model.modules[i].kind;
    if (k == ModuleKind::kLayer || k == ModuleKind::kExperts) largest = std::max(largest, s);
  }
  const uint64_t mean = total / r.model.modules.size();
  const uint64_t buffer = static_cast<uint64_t>(1.25 * static_cast<double>(std::max(largest, mean)));
  const uint64_t share = total / (low_zero ? main.size() - 1 : main.size()) + buffer + l.activations(true);
  for (size_t k = 0; k + 1 < main.size(); ++k) l.set_cap(main[k], std::min(l.cap(main[k]), share));
  if (low_zero) {
    uint64_t others = 0;
    for (size_t k = 1; k < main.size(); ++k) others = l.cap(main[k]) == kInf ? kInf : others + l.cap(main[k]);
    const uint64_t rest = others >= total ? 0 : total - others + l.activations(true);
    l.set_cap(main[0], std::min(l.cap(main[0]), rest));
  }
}

// Pipeline mode: cut the modules into contiguous pieces over the main devices so the
// slowest piece is as fast as possible (stage time ~ FLOPs), within each budget.
// Returns per-module main-device index, or empty when the model does not fit on them.
std::vector<int> compute_balanced(const PlanRequest& r, const Ledger& l, const std::vector<DeviceName>& main) {
  const auto& mods = r.model.modules;
  const int64_t n = static_cast<int64_t>(mods.size());
  const size_t k = main.size();
  // Bytes of [j, i) on one device, tied tensors counted once.
  auto bytes = [&](int64_t j, int64_t i) {
    std::set<std::string> seen;
    uint64_t b = 0;
    bool head = false;
    for (int64_t x = j; x < i; ++x) {
      for (const auto& t : mods[x].tensors)
        if (seen.insert(t.name).second) b += t.bytes;
      b += l.kv_of(mods[x]);
      head |= mods[x].kind == ModuleKind::kHead;
    }
    return b + l.activations(head);
  };
  std::vector<double> prefix(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + mods[i].flops_per_token;
  const double inf = std::numeric_limits<double>::infinity();
  // best[d][i]: min over partitions of modules [0, i) onto devices [0, d] of the max cost.
  std::vector<std::vector<double>> best(k, std::vector<double>(n + 1, inf));
  std::vector<std::vector<int64_t>> cut(k, std::vector<int64_t>(n + 1, -1));
  for (size_t d = 0; d < k; ++d) {
    const uint64_t cap = l.cap(main[d]);
    for (int64_t i = 0; i <= n; ++i) {
      for (int64_t j = i; j >= 0; --j) {  // device d takes [j, i)
        const double prev = d == 0 ? (j == 0 ? 0.0 : inf) : best[d - 1][j];
        if (prev == inf) continue;
        if (j < i && bytes(j, i) > cap) break;  // longer pieces only grow
        const double v = std::max(prev, prefix[i] - prefix[j]);
        if (v < best[d][i]) {
          best[d][i] = v;
          cut[d][i] = j;
        }
      }
    }
  }
  if (best[k - 1][n] == inf) return {};
  std::vector<int> owner(n, 0);
  int64_t i = n;
  for (int d = static_cast<int>(k) - 1; d >= 0; --d) {
    const int64_t j = cut[d][i];
    for (int64_t x = j; x < i; ++x) owner[x] = d;
    i = j;
  }
  return owner;
}

// Resolves a manual device_map (module-prefix keys) to one device per module. As in
// accelerate, the most specific key covering a module wins ("model.layers" and
// "model.layers.3.block_sparse_moe" together put that one expert block elsewhere).
std::vector<DeviceName> resolve_manual(const PlanRequest& r) {
  const auto& mods = r.model.modules;
  std::vector<int> by(mods.size(), -1);
  std::set<std::string> budgeted;
  for (const auto& b : r.budgets) budgeted.insert(b.device.str());
  for (size_t k = 0; k < r.device_map.size(); ++k) {
    const auto& [key, dev] = r.device_map[k];
    if (!budgeted.count(dev.str())) {
      throw PlanError("device_map puts '" + key + "' on " + dev.str() +
                      ", which has no budget: add it to placement.max_memory");
    }
    bool matched = false;
    for (size_t i = 0; i < mods.size(); ++i) {
      const std::string& name = mods[i].name;
      if (key.empty() || key == name || name.compare(0, key.size() + 1, key + ".") == 0) {
        if (by[i] < 0 || r.device_map[by[i]].first.size() < key.size()) by[i] = static_cast<int>(k);
        matched = true;
      }
    }
    if (matched) continue;
    for (const auto& m : mods) {  // a key inside a module (a layer's expert block is a module of its own)
      if (key.size() > m.name.size() && key.compare(0, m.name.size() + 1, m.name + ".") == 0) {
        throw PlanError("device_map key '" + key + "' would split module '" + m.name +
                        "'; modules (decoder layers included) are placed whole");
      }
    }
    throw PlanError("device_map key '" + key + "' matches no module (modules: " + mods.front().name + ", " +
                    (mods.size() > 2 ? mods[1].name + " ... " : "") + mods.back().name + ")");
  }
  std::vector<DeviceName> out;
  for (size_t i = 0; i < mods.size(); ++i) {
    if (by[i] < 0) throw PlanError("module '" + mods[i].name + "' is not covered by device_map");
    out.push_back(r.device_map[by[i]].second);
  }
  return out;
}

// The order the fill places modules in: execution order, but with experts = auto or
// offload the expert blocks after everything else, so attention, norms, routers and the
// head take the GPU first; with `embedding_last` the embedding after those.
std::vector<int64_t> fill_sequence(const PlanRequest& r, bool embedding_last) {
  std::vector<int64_t> seq(r.model.modules.size());
  std::iota(seq.begin(), seq.end(), 0);
  const auto kind = [&](int64_t i) { return r.model.modules[static_cast<size_t>(i)].kind; };
  if (r.experts != config::ExpertPlacement::kWithLayer)
    std::stable_partition(seq.begin(), seq.end(), [&](int64_t i) { return kind(i) != ModuleKind::kExperts; });
  if (embedding_last)
    std::stable_partition(seq.begin(), seq.end(), [&](int64_t i) { return kind(i) != ModuleKind::kEmbedding; });
  return seq;
}

// Strategy placement (no manual map) into `out`, charging `l`; `embedding_last` as in
// fill_sequence.
void fill(const PlanRequest& r, const std::vector<DeviceName>& order, const std::vector<DeviceName>& main, Ledger& l,
          std::vector<DeviceName>& out, bool embedding_last) {
  const int64_t n = static_cast<int64_t>(r.model.modules.size());
  const bool balanced = r.strategy != config::Strategy::kSequential;
  std::vector<int> owner;
  if (balanced && r.mode == config::Mode::kPipeline && main.size() > 1) owner = compute_balanced(r, l, main);
  if (!owner.empty()) {
    for (int64_t i = 0; i < n; ++i) {
      l.place(i, main[owner[i]]);
      out[i] = main[owner[i]];
    }
    return;
  }
  if (balanced) balance_caps(r, l, main, r.strategy == config::Strategy::kBalancedLow0);
  size_t cur = 0;
  bool experts_begun = false;
  std::string last_over;
  for (const int64_t i : fill_sequence(r, embedding_last)) {
    if (r.experts == config::ExpertPlacement::kOffload && !experts_begun &&
        r.model.modules[i].kind == ModuleKind::kExperts) {
      experts_begun = true;  // the expert blocks start at the offload tier
      while (cur < order.size() && !l.is_offload_tier(order[cur])) ++cur;
      if (cur == order.size())
        throw PlanError(
            "experts = \"offload\" puts the expert blocks on the CPU or disk, and neither has a budget: "
            "add \"cpu\" to max_memory");
    }
    while (true) {
      if (cur == order.size()) impossible(r, l, i, last_over);
      const std::optional<std::string> over = l.overflow(l.charge(i, order[cur]));
      if (!over) break;
      last_over = *over;
      ++cur;
    }
    l.place(i, order[cur]);
    out[i] = order[cur];
  }
}

void validate(const PlanRequest& r) {
  if (r.model.modules.empty()) throw PlanError("the model has no modules");
  if (r.budgets.empty()) throw PlanError("no devices to place the model on (max_memory is empty)");
  if (r.max_batch < 1 || r.max_seq_len < 1) throw PlanError("max_batch and max_seq_len must be at least 1");
  std::set<std::string> seen;
  for (const auto& b : r.budgets) {
    if (!seen.insert(b.device.str()).second) throw PlanError("device " + b.device.str() + " is listed twice");
  }
  if (const std::optional<DeviceName> gpu = stream_gpu(r.offload_compute)) {
    const DeviceName g = *gpu;
    if (!seen.count(g.str())) {
      throw PlanError("offload_compute " + g.str() + " has no budget: add it to placement.max_memory");
    }
  }
}

}  // namespace

uint64_t ModuleInfo::weight_bytes() const {
  uint64_t b = 0;
  for (const auto& t : tensors) b += t.bytes;
  return b;
}

double ModuleInfo::read_bytes() const {
  double b = 0;
  for (const auto& t : tensors) b += static_cast<double>(t.bytes) * t.read_share;
  return b;
}

uint64_t ModelDescriptor::total_weight_bytes() const {
  std::set<std::string> seen;
  uint64_t b = 0;
  for (const auto& m : modules)
    for (const auto& t : m.tensors)
      if (seen.insert(t.name).second) b += t.bytes;
  return b;
}

const char* to_string(Transport t) {
  switch (t) {
    case Transport::kNccl:
      return "nccl";
    case Transport::kShm:
      return "shm";
    case Transport::kMpi:
      return "mpi";
  }
  return "?";
}

std::string hf_device(const DeviceName& d) {
  if (d.is_gpu()) return std::to_string(d.index);
  if (d.kind == Kind::kDisk) return "disk";
  return d.index == 0 ? "cpu" : d.str();
}

namespace {

// The device map for a resolved offload_compute, charged to `l` (budgets not yet
// checked, no stages yet).
Plan fill_plan(const PlanRequest& r, Ledger& l) {
  validate(r);
  const auto& mods = r.model.modules;
  const int64_t n = static_cast<int64_t>(mods.size());
  const std::vector<DeviceName> order = fill_order(r.budgets);
  Plan plan;
  plan.module_device.resize(n);
  if (!r.device_map.empty()) {
    plan.module_device = resolve_manual(r);
    for (int64_t i = 0; i < n; ++i) l.place(i, plan.module_device[i]);
    return plan;
  }
  std::vector<DeviceName> main;
  for (const auto& d : order)
    if (d.is_gpu()) main.push_back(d);
  if (main.empty()) {
    for (const auto& d : order)
      if (d.kind == Kind::kCpu) main.push_back(d);
  }
  uint64_t largest_module = 0;
  for (const auto& m : mods) largest_module = std::max(largest_module, m.weight_bytes());
  // Fill once; if anything is offloaded while offload_compute streams to a GPU (or the
  // fill failed with that GPU full), fill again with two copies of the largest module
  // reserved there (its double buffer) and the KV cache of every layer on it; if that
  // fill puts modules on the disk tier, once more with the host's pinned staging
  // buffers reserved on the offload CPU (the stream reads disk-tier modules into them).
  const auto offloaded = [&] {
    return std::any_of(plan.module_device.begin(), plan.module_device.end(),
                       [&](const DeviceName& d) { return l.is_offload_tier(d); });
  };
  const auto on_disk = [&] {
    return std::any_of(plan.module_device.begin(), plan.module_device.end(),
                       [](const DeviceName& d) { return d.kind == Kind::kDisk; });
  };
  bool host_staging = false;
  const auto reserve = [&](Ledger& ledger, int pass) {
    if (pass == 0) return;
    ledger.reserve_staging(*ledger.offload_gpu(), 2 * largest_module);
    ledger.precharge_kv(*ledger.offload_gpu());
    if (host_staging) ledger.reserve_staging(ledger.last_cpu(), host_staging_bytes(r, largest_module));
  };
  int pass = 0;
  for (; pass < 3; ++pass) {
    l = Ledger(r);
    reserve(l, pass);
    try {
      fill(r, order, main, l, plan.module_device, false);
    } catch (const PlanError&) {
      if (pass > 0 || !l.offload_gpu()) throw;
      continue;
    }
    if (!offloaded() || !l.offload_gpu()) break;
    if (pass > 0) {
      if (host_staging || !on_disk()) break;
      host_staging = true;
      no_room_for_staging(r, l, largest_module);
    }
  }
  // Something is offloaded and the CPU computes: fill again with the embedding last
  // (PlanRequest::offload_compute says why), and keep that fill where the GPUs then hold
  // more of the other modules' bytes (else the embedding's room took no module).
  const auto on_gpus = [&] {
    uint64_t b = 0;
    for (int64_t i = 0; i < n; ++i)
      if (plan.module_device[i].is_gpu() && mods[i].kind != ModuleKind::kEmbedding) b += mods[i].weight_bytes();
    return b;
  };
  const bool cpu_computes = !l.offload_gpu() || is_hybrid(r.offload_compute);
  if (offloaded() && cpu_computes && !main.empty() && main.front().is_gpu() && r.model.embedding_movable) {
    const Ledger before = l;
    const std::vector<DeviceName> devices = plan.module_device;
    const uint64_t resident = on_gpus();
    l = Ledger(r);
    reserve(l, pass);  // as the fill that stands reserved
    bool better = false;
    try {
      fill(r, order, main, l, plan.module_device, true);
      better = on_gpus() > resident;
    } catch (const PlanError&) {
    }
    if (!better) {
      l = before;
      plan.module_device = devices;
    }
  }
  return plan;
}

// The offloaded modules (the last CPU device's and the disk tier's) that could stream,
// in execution order: all but an embedding, which the CPU looks up.
std::vector<int64_t> streamable_modules(const PlanRequest& r, const Ledger& l, const Plan& plan) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < plan.module_device.size(); ++i)
    if (l.is_offload_tier(plan.module_device[i]) && r.model.modules[i].kind != ModuleKind::kEmbedding)
      out.push_back(static_cast<int64_t>(i));
  return out;
}

// Which of the offloaded modules stream to the GPU: `count` of them, spread evenly so
// that each streamed module follows a run of CPU-computed ones whose compute hides its copy.
std::vector<char> spread_streamed(const std::vector<int64_t>& offloaded, size_t n_modules, int64_t count) {
  std::vector<char> out(n_modules, 0);
  const int64_t total = static_cast<int64_t>(offloaded.size());
  for (int64_t k = 0; k < total; ++k)
    if ((k + 1) * count / total > k * count / total) out[static_cast<size_t>(offloaded[k])] = 1;
  return out;
}

// Stages, route and edges of a filled plan; streamed[i]: offloaded module i computes
// on the offload GPU (its weights streamed), else on the last CPU device. Checks budgets.
void finish_plan(const PlanRequest& r, Ledger& l, Plan& plan, const std::vector<char>& streamed) {
  const auto& mods = r.model.modules;
  const int64_t n = static_cast<int64_t>(mods.size());
  uint64_t largest_streamed = 0;
  bool staged = false;  // a streamed module lies on the disk tier: the host stages it
  for (int64_t i = 0; i < n; ++i) {
    if (!l.is_offload_tier(plan.module_device[i])) continue;
    if (streamed[i]) {
      largest_streamed = std::max(largest_streamed, mods[i].weight_bytes());
      staged = staged || plan.module_device[i].kind == Kind::kDisk;
    } else if (l.offload_gpu()) {
      l.compute_on_cpu(i);
    }
  }
  // Staging actually needed: two copies of the largest streamed module on the GPU, and
  // where a streamed module lies on the disk tier the host's pinned staging buffers
  // (never more than the fill reserved).
  if (l.offload_gpu()) {
    l.usage()[l.offload_gpu()->str()].staging = 2 * largest_streamed;
    if (staged || l.usage().count(l.last_cpu().str()))
      l.usage()[l.last_cpu().str()].staging = staged ? host_staging_bytes(r, largest_streamed) : 0;
  }

  // Budgets hold (a manual map is checked here; the fill never breaks them).
  for (const auto& b : r.budgets) {
    DeviceUsage& u = l.usage()[b.device.str()];
    u.budget = b.bytes;
    if (b.bytes && u.total() > *b.bytes) {
      throw PlanError("the plan puts " + gib(u.total()) + " on " + b.device.str() + " (weights " + gib(u.weights) +
                      ", KV " + gib(u.kv) + ", activations " + gib(u.activations) + ", staging " + gib(u.staging) +
                      ") but its budget is " + gib(*b.bytes));
    }
  }
  plan.devices = l.usage();

  // Stages: one per GPU and per extra CPU device, and one per offload group: the
  // streaming one computes on the offload GPU, the other on the last CPU device (both
  // keep their weights there and on disk). Ranks follow first use along the route.
  std::map<std::string, int> rank_of;
  std::set<int> offload_ranks;
  for (int64_t i = 0; i < n; ++i) {
    const DeviceName tier = plan.module_device[i];
    const bool offload = l.is_offload_tier(tier);
    const DeviceName compute = !offload ? tier : streamed[i] ? *l.offload_gpu() : l.last_cpu();
    const std::string key = !offload ? tier.str() : streamed[i] ? "stream" : "offload";
    auto it = rank_of.find(key);
    if (it == rank_of.end()) {
      it = rank_of.emplace(key, static_cast<int>(plan.stages.size()) + 1).first;
      if (offload) offload_ranks.insert(it->second);
      Stage s;
      s.rank = it->second;
      s.device = compute;
      plan.stages.push_back(s);
    }
    Stage& s = plan.stages[it->second - 1];
    if (std::find(s.tiers.begin(), s.tiers.end(), tier) == s.tiers.end()) s.tiers.push_back(tier);
    if (!plan.route_ranks.empty() && plan.route_ranks.back() == s.rank) {
      ++plan.route_segments.back().end;
      ++s.segments.back().end;
    } else {
      plan.route_segments.push_back({i, i + 1});
      plan.route_ranks.push_back(s.rank);
      s.segments.push_back({i, i + 1});
    }
  }
  std::vector<int> hops = {0};
  hops.insert(hops.end(), plan.route_ranks.begin(), plan.route_ranks.end());
  hops.push_back(0);
  for (size_t h = 0; h + 1 < hops.size(); ++h) {
    Edge e{hops[h], hops[h + 1], Transport::kShm};
    if (e.from == 0 || e.to == 0) e.transport = Transport::kMpi;  // token ids to and from the coordinator
    // NCCL joins distinct GPUs; an offload stage may share its GPU with a GPU stage.
    else if (plan.stages[e.from - 1].device.is_gpu() && plan.stages[e.to - 1].device.is_gpu() &&
             !offload_ranks.count(e.from) && !offload_ranks.count(e.to) &&
             plan.stages[e.from - 1].device != plan.stages[e.to - 1].device)
      e.transport = Transport::kNccl;
    plan.edges.push_back(e);
  }
  plan.predicted_step_s = predicted_step_seconds(r, plan);
}

// One plan for offload_compute cpu or cuda:N.
Plan plan_with(const PlanRequest& r) {
  Ledger l(r);
  Plan plan = fill_plan(r, l);
  std::vector<char> streamed(plan.module_device.size(), l.offload_gpu() ? 1 : 0);
  finish_plan(r, l, plan, streamed);
  plan.offload_compute = l.offload_gpu() ? l.offload_gpu()->str() : "cpu";
  return plan;
}

std::string ms(double s) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(1) << s * 1e3 << " ms";
  return o.str();
}

constexpr const char* kNothingOffloaded = "nothing is offloaded";

// offload_compute = cpu+cuda:N: streamed_share of the offloaded modules streamed, or
// the count the cost model predicts fastest (all of them resolves to cuda:N).
Plan hybrid_plan(const PlanRequest& r) {
  Ledger filled(r);
  const Plan base = fill_plan(r, filled);
  const std::vector<int64_t> off = streamable_modules(r, filled, base);
  const int64_t total = static_cast<int64_t>(off.size());
  bool cpu_embeds = false;  // an offloaded embedding: the CPU computes it whatever the split
  for (size_t i = 0; i < base.module_device.size(); ++i)
    cpu_embeds |= filled.is_offload_tier(base.module_device[i]) && r.model.modules[i].kind == ModuleKind::kEmbedding;
  auto with = [&](int64_t count) {
    Ledger l = filled;
    Plan p = base;
    finish_plan(r, l, p, spread_streamed(off, p.module_device.size(), count));
    return p;
  };
  Plan best;
  int64_t best_count = -1;
  std::string tried;
  if (r.streamed_share) {
    best_count = std::llround(*r.streamed_share * static_cast<double>(total));
    best = with(best_count);
  } else {
    for (int64_t count = 0; count <= total; ++count) {
      Plan p;
      try {
        p = with(count);
      } catch (const PlanError&) {
        continue;  // the CPU cannot hold what it would compute
      }
      if (best_count < 0 || p.predicted_step_s < best.predicted_step_s) {
        best = p;
        best_count = count;
      }
      if (count == 0 || count == total)
        tried +=
            std::string(tried.empty() ? "" : ", ") + (count ? "all streamed ~" : "none ~") + ms(p.predicted_step_s);
    }
    if (best_count < 0) return with(0);  // throws the budget error
  }
  const std::string gpu = filled.offload_gpu()->str();
  best.offload_compute = best_count == total && !cpu_embeds ? gpu : best_count == 0 ? "cpu" : "cpu+" + gpu;
  const std::string of = " of " + std::to_string(total) + " offloaded modules";
  best.offload_choice = best_count == total ? "all" + of + " streamed to " + gpu
                        : best_count == 0   ? "none" + of + " streamed, all computed on the CPU"
                                            : std::to_string(best_count) + of + " streamed to " + gpu +
                                                ", the rest computed on the CPU between them";
  if (cpu_embeds) best.offload_choice += ", the embedding looked up on the CPU";
  best.offload_choice += ": ~" + ms(best.predicted_step_s) + " a step" + (tried.empty() ? "" : " (" + tried + ")");
  if (total == 0 && !cpu_embeds) best.offload_choice = kNothingOffloaded;
  return best;
}

}  // namespace

Plan make_plan(const PlanRequest& req) {
  if (req.streamed_share && !is_hybrid(req.offload_compute))
    throw PlanError("streamed_share applies to offload_compute = \"cpu+cuda:N\" only, not \"" + req.offload_compute +
                    "\"");
  if (req.streamed_share && (*req.streamed_share < 0 || *req.streamed_share > 1))
    throw PlanError("streamed_share must be between 0 and 1");
  if (is_hybrid(req.offload_compute)) return hybrid_plan(req);
  if (req.offload_compute != "auto") return plan_with(req);
  // auto: plan CPU compute and the best split with the first GPU; keep the faster step.
  PlanRequest r = req;
  r.offload_compute = "cpu";
  Plan cpu = plan_with(r);
  for (const auto& b : req.budgets) {
    if (!b.device.is_gpu()) continue;
    r.offload_compute = "cpu+" + b.device.str();
    Plan split;
    try {
      split = hybrid_plan(r);
    } catch (const PlanError&) {
      cpu.offload_choice = "streaming to " + b.device.str() + " does not fit its budget; CPU compute";
      return cpu;
    }
    if (split.offload_choice == kNothingOffloaded) return split;
    Plan& best = split.predicted_step_s <= cpu.predicted_step_s ? split : cpu;
    best.offload_choice = "a step of " + std::to_string(req.max_batch) + (req.max_batch == 1 ? " token" : " tokens") +
                          " by the cost model: all offloaded modules computed on the CPU ~" + ms(cpu.predicted_step_s) +
                          "; " + split.offload_choice + "; chose " + best.offload_compute;
    return best;
  }
  cpu.offload_choice = "no GPU budget; CPU compute";
  return cpu;
}

}  // namespace cascade::planner
