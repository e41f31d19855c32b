// Renders a Plan for people (a table) and for programs (JSON, the shape
// `cascade plan --json` prints and scripts/compare_accelerate.py reads).
#pragma once

#include <string>

#include "planner/plan.h"

namespace cascade::planner {

// The device map, a per-device table (modules, weights, KV, activations, staging,
// budget, % used), the stages and the route.
std::string format_plan(const ModelDescriptor& model, const Plan& plan);

// {"device_map": {module: 0 | "cpu" | "cpu:1" | "disk"}, "offload_compute", "offload_choice",
//  "predicted_step_s" (the cost model's decode step of max_batch tokens), "stages": [...],
//  "route": [...], "edges": [...],
//  "devices": {name: {"budget", "weights", "kv", "activations", "staging"}}}
std::string plan_json(const ModelDescriptor& model, const Plan& plan);

}  // namespace cascade::planner
