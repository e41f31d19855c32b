#include "planner/budgets.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "config/size.h"

namespace cascade::planner {
namespace {

using Kind = config::DeviceName::Kind;

// The CPU keeps 10% of MemAvailable (at least 1 GiB) for the OS, the coordinator and
// page cache that disk-tier weights stream through.
uint64_t cpu_reserve(uint64_t available) { return std::max<uint64_t>(1ull << 30, available / 10); }

}  // namespace

HostMemory probe_host_memory() {
  HostMemory h;
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb) {
    std::getline(in, unit);
    if (key == "MemAvailable:") h.mem_available = kb * 1024;
  }
  return h;
}

std::vector<BudgetSpec> parse_max_memory(const std::string& flag) {
  std::vector<BudgetSpec> out;
  std::stringstream ss(flag);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    BudgetSpec b;
    try {
      b.device = config::parse_device(item.substr(0, eq));
      if (eq == std::string::npos)
        b.measure = b.device.kind != Kind::kDisk;
      else
        b.bytes = config::parse_size(item.substr(eq + 1));
    } catch (const std::invalid_argument& e) {
      throw PlanError("--max-memory entry '" + item + "': " + e.what());
    }
    for (const auto& o : out) {
      if (o.device == b.device) throw PlanError("--max-memory lists " + b.device.str() + " twice");
    }
    out.push_back(b);
  }
  if (out.empty()) throw PlanError("--max-memory is empty (e.g. \"cuda:0=20GiB,cpu=64GiB,disk\")");
  return out;
}

std::vector<BudgetSpec> from_config(const std::vector<config::MemoryBudget>& max_memory) {
  std::vector<BudgetSpec> out;
  for (const auto& m : max_memory) out.push_back({m.device, m.bytes, false});
  return out;
}

std::vector<DeviceBudget> resolve_budgets(const std::vector<BudgetSpec>& given, const HostMemory& host) {
  std::vector<BudgetSpec> specs = given;
  if (specs.empty()) {
    for (size_t g = 0; g < host.gpu_free.size(); ++g) specs.push_back({{Kind::kCuda, static_cast<int>(g)}, {}, true});
    specs.push_back({{Kind::kCpu, 0}, {}, true});
    specs.push_back({{Kind::kDisk, 0}, {}, false});
  }
  const int measured_cpus = static_cast<int>(std::count_if(
      specs.begin(), specs.end(), [](const BudgetSpec& s) { return s.measure && s.device.kind == Kind::kCpu; }));
  std::vector<DeviceBudget> out;
  for (const auto& s : specs) {
    DeviceBudget b{s.device, s.bytes, s.measure};
    if (s.measure && s.device.is_gpu()) {
      if (static_cast<size_t>(s.device.index) >= host.gpu_free.size()) {
        throw PlanError(s.device.str() + " has no size and this machine has " + std::to_string(host.gpu_free.size()) +
                        " GPU(s) to measure; give one, e.g. " + s.device.str() + "=20GiB");
      }
      const uint64_t f = host.gpu_free[s.device.index];
      b.bytes = f > kGpuReserve ? f - kGpuReserve : 0;
    } else if (s.measure && s.device.kind == Kind::kCpu) {
      // Measured CPU devices (cpu:0, cpu:1, ...) share the host's RAM evenly.
      const uint64_t a = host.mem_available;
      const uint64_t usable = a > cpu_reserve(a) ? a - cpu_reserve(a) : 0;
      b.bytes = usable / static_cast<uint64_t>(measured_cpus);
    }
    out.push_back(b);
  }
  return out;
}

}  // namespace cascade::planner
