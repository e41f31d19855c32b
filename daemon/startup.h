// The one start-up path of `cascade serve`, `bench` and `generate --config` (DESIGN §1,
// steps 1-3): plan_run() plans the configuration (config.json and safetensors headers
// only; the model is described once, there), the caller checks its own input against
// the plan, then start_stages() starts the stage processes of the plan and waits until
// every one has loaded and connected. What a mode needs to schedule steps follows from
// the result.
//
// Ownership: a Started holds the plan and shares the Cluster with whoever runs steps on
// it. Throws on bad input or an impossible plan (before any stage starts) and
// ClusterError when a stage fails to start.
#pragma once

#include <iosfwd>
#include <memory>

#include "config/config.h"
#include "daemon/cluster.h"
#include "daemon/planning.h"
#include "daemon/scheduler.h"

namespace cascade::daemon {

struct Started {
  PlannedRun run;                    // config, checkpoint headers, model description, plan
  std::shared_ptr<Cluster> cluster;  // loaded and connected
  int stages() const { return static_cast<int>(run.plan.stages.size()); }
};

// With `trace`, the stages record spans for `cascade bench --trace`.
Started start_stages(PlannedRun run, std::ostream& log, bool trace = false);

// Scheduler options for running `mode` on these stages: sequential = one step in
// flight and whole prompts; pipeline = runtime.microbatches (0: one per stage) steps
// in flight and prompts cut into runtime.prefill_chunk (0: 128) tokens. EOS ids come
// from the model, busy counters and labels from the stages.
SchedulerOptions scheduler_options(const Started& s, config::Mode mode);

}  // namespace cascade::daemon
