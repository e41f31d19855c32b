// Device budgets: what each device may hold. Given in max_memory (config or the
// --max-memory flag), or measured: each GPU's free memory minus a reserve for the CUDA
// context and workspaces, MemAvailable minus a reserve for the CPU, disk unlimited.
// Measured values come from a HostMemory the caller fills (the planner itself never
// touches a GPU), so plans for GPUs this machine lacks can be made from given sizes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "planner/plan.h"

namespace cascade::planner {

constexpr uint64_t kGpuReserve = 1ull << 30;  // CUDA context + cuBLAS workspace

struct BudgetSpec {
  config::DeviceName device;
  std::optional<uint64_t> bytes;  // nullopt: unlimited, or measured when `measure`
  bool measure = false;
};

struct HostMemory {
  std::vector<uint64_t> gpu_free;  // per visible GPU, bytes free now
  uint64_t mem_available = 0;      // MemAvailable
};

// MemAvailable from /proc/meminfo (GPUs are left empty for the caller to fill).
HostMemory probe_host_memory();

// "cuda:0=2GiB,cpu=8GiB,disk": a device without "=size" is measured (disk: unlimited).
// Throws PlanError naming the bad entry.
std::vector<BudgetSpec> parse_max_memory(const std::string& flag);
std::vector<BudgetSpec> from_config(const std::vector<config::MemoryBudget>& max_memory);

// Fills measured budgets; with no specs at all, every GPU, the CPU and disk are used.
// Throws PlanError when a device must be measured but this machine does not have it.
std::vector<DeviceBudget> resolve_budgets(const std::vector<BudgetSpec>& specs, const HostMemory& host);

}  // namespace cascade::planner
