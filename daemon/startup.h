// The one start-up path of `cascade serve`, `bench` and `generate --config` (DESIGN §1,
// steps 1-3): plan_run() plans the configuration (config.json and safetensors headers
// only; the model is described once, there), the caller checks its own input against
// the plan, then start_stages() starts the stage processes of the plan and waits until
// every one has loaded and connected. What a mode needs to schedule steps follows from
// the result. `cascade generate` loads a plan of one stage in its own process instead
// (runs_here(), load_here()).
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

// Marks when main() began, so that the ready line can tell the process's and its
// libraries' start-up (LibTorch's static initialisers: most of it) from planning.
void note_main_started();

struct Started {
  PlannedRun run;                    // config, checkpoint headers, model description, plan
  std::shared_ptr<Cluster> cluster;  // loaded and connected
  int stages() const { return static_cast<int>(run.plan.stages.size()); }
};

// With `trace`, the stages record spans for `cascade bench --trace`.
Started start_stages(PlannedRun run, std::ostream& log, bool trace = false);

// Whether `cascade generate` runs the plan in its own process (DESIGN §7: one process
// when the plan has one stage): one stage, sequential mode, no ranks that mpirun
// started beside this one, and not `spawn_stages`. Nothing then starts MPI.
bool runs_here(const PlannedRun& run, bool spawn_stages);

// The plan's one stage loaded into this process, as its stage process would load it
// (stage::load_stage): prints the device map, the stage's ready line and the time to
// ready from launch, as start_stages() does. Throws on a load failure, naming the stage.
std::shared_ptr<Executor> load_here(const PlannedRun& run, std::ostream& log);

// Scheduler options for running `mode` on these stages: sequential = one step in
// flight and whole prompts; pipeline = runtime.microbatches (0: one per stage) steps
// in flight and prompts cut into runtime.prefill_chunk (0: 128) tokens. EOS ids come
// from the model, busy counters and labels from the stages.
SchedulerOptions scheduler_options(const Started& s, config::Mode mode);

}  // namespace cascade::daemon
