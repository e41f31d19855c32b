#include "planner/fill.h"

#include <cmath>
#include <numeric>

namespace cascade::planner::detail {

std::vector<DeviceName> fill_order(const std::vector<DeviceBudget>& budgets) {
  std::vector<DeviceName> out;
  for (const auto& b : budgets) out.push_back(b.device);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

uint64_t host_staging_bytes(const PlanRequest& r, uint64_t slot) {
  return static_cast<uint64_t>(r.staging_buffer_count()) * slot;
}

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

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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

}  // namespace cascade::planner::detail
