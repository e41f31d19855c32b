// Bridges a checkpoint and the planner: builds the planner's ModelDescriptor from
// config.json and the safetensors headers (no tensor data), turns a Config into a
// PlanRequest with measured or given budgets, and runs `cascade plan`.
#pragma once

#include <ATen/ATen.h>

#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "planner/budgets.h"
#include "planner/plan.h"
#include "stage/model.h"

namespace cascade::storage {
class Checkpoint;
}

namespace cascade::daemon {

// The planner's view of a described model: module sizes at the compute dtype
// (non-float tensors keep their stored size), FLOPs, KV and activation sizes as the
// family declares them. Under LLM.int8 the weights the family marks quantizable
// (skip_modules excepted) count one byte per element plus a float32 scale per row.
planner::ModelDescriptor build_descriptor(const storage::Checkpoint& ck, const stage::ModelDescription& d,
                                          at::ScalarType dtype, const config::QuantizationSection& quant = {});
// The same, describing the checkpoint first.
planner::ModelDescriptor build_descriptor(const storage::Checkpoint& ck, at::ScalarType dtype,
                                          const config::QuantizationSection& quant = {});

// A configuration resolved into a plan: the checkpoint opened (headers only), the
// compute dtype, the planner's input and its output.
struct PlannedRun {
  config::Config config;
  std::shared_ptr<const storage::Checkpoint> checkpoint;
  stage::ModelDescription description;  // the family's config and modules, described once
  at::ScalarType dtype = at::kFloat;
  planner::PlanRequest request;
  planner::Plan plan;
  std::string rates;  // where the cost model's rates came from (daemon/calibrate.h)
};
// `max_memory` ("cuda:0=2GiB,cpu") replaces the config's budgets when not empty. The
// cost model's rates come from plan_run_rates (daemon/calibrate.h), which may measure
// them first: its progress goes to `progress` (null: standard error).
PlannedRun plan_run(const config::Config& cfg, const std::string& max_memory = "", std::ostream* progress = nullptr);

// "cascade: device map" with the plan's table, then the cost model's predicted step.
void print_plan(const PlannedRun& run, std::ostream& log);

// Free memory of each visible GPU (empty in a CPU-only build) and MemAvailable.
planner::HostMemory probe_host();

struct PlanOptions {
  std::string config_file;             // --config; other flags override it
  std::vector<std::string> overrides;  // --set
  std::string model_dir;               // --model
  std::string max_memory;              // --max-memory "cuda:0=2GiB,cpu=8GiB,disk"
  std::string strategy, mode, dtype, offload_compute, experts, quantization;
  int64_t max_batch = 0, max_seq_len = 0;  // 0 = from the config / defaults
  bool json = false;
};

// Prints the plan (a table, or JSON) to `out`; throws on bad input or an impossible plan.
void run_plan(const PlanOptions& opts, std::ostream& out);

}  // namespace cascade::daemon
