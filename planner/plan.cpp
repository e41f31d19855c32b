#include "planner/plan.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "config/size.h"
#include "planner/fill.h"

namespace cascade::planner {

using namespace detail;  // the fill, inside this library

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
  // fill failed with that GPU full), fill again with stream_slots copies of the largest
  // module reserved there (its slots) and the KV cache of every layer on it; if that
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
    ledger.reserve_staging(*ledger.offload_gpu(), static_cast<uint64_t>(r.stream_slots) * largest_module);
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
  // Staging actually needed: a slot per stream_slots of the largest streamed module on
  // the GPU, and
  // where a streamed module lies on the disk tier the host's pinned staging buffers
  // (never more than the fill reserved).
  if (l.offload_gpu()) {
    l.usage()[l.offload_gpu()->str()].staging = static_cast<uint64_t>(r.stream_slots) * largest_streamed;
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
  plan.stream_slots = r.stream_slots;
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

// make_plan for a request whose stream_slots is a count.
Plan plan_for_slots(const PlanRequest& req) {
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

// Whether a stage of `p` computes on a GPU from weights kept elsewhere: streams them.
bool streams(const Plan& p) {
  for (const auto& st : p.stages)
    if (st.device.is_gpu() &&
        std::any_of(st.tiers.begin(), st.tiers.end(), [](const DeviceName& t) { return !t.is_gpu(); }))
      return true;
  return false;
}

// stream_slots "auto": the plan of 2 to kMostAutoSlots slots the cost model predicts
// fastest, fewer slots unless more are at least 1% faster (each costs GPU memory).
Plan plan_auto_slots(const PlanRequest& req) {
  PlanRequest r = req;
  std::vector<Plan> plans;
  for (int s = config::kMinStreamSlots; s <= kMostAutoSlots; ++s) {
    r.stream_slots = s;
    try {
      plans.push_back(plan_for_slots(r));
    } catch (const PlanError&) {
      if (plans.empty()) throw;  // nothing fits even a double buffer
      break;                     // more slots leave less room still
    }
  }
  size_t best = 0;
  for (size_t i = 1; i < plans.size(); ++i)
    if (streams(plans[i]) && plans[i].predicted_step_s < 0.99 * plans[best].predicted_step_s) best = i;
  Plan out = plans[best];
  if (!streams(out)) return out;
  std::string tried;
  for (const Plan& p : plans)
    tried += (tried.empty() ? "" : ", ") + std::to_string(p.stream_slots) + " ~" + ms(p.predicted_step_s);
  out.offload_choice += "; " + std::to_string(out.stream_slots) + " GPU slots to stream through (" + tried + ")";
  return out;
}

}  // namespace

Plan make_plan(const PlanRequest& req) {
  if (req.stream_slots == config::kAutoStreamSlots) return plan_auto_slots(req);
  if (req.stream_slots < config::kMinStreamSlots || req.stream_slots > config::kMaxStreamSlots)
    throw PlanError("stream_slots must be \"auto\" or " + std::to_string(config::kMinStreamSlots) + " to " +
                    std::to_string(config::kMaxStreamSlots) + ", not " + std::to_string(req.stream_slots));
  return plan_for_slots(req);
}

}  // namespace cascade::planner
