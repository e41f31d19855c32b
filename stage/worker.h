// The stage process (DESIGN §1, §5): what `cascade stage` and ranks 1..S under mpirun
// run. It receives its assignment (comm/control.h) from the coordinator over MPI, loads only its own
// modules (reporting progress), opens its channels, reports ready, and then serves
// steps in route order until a shutdown step has passed through all its hops.
//
// Failures are reported, not hidden: a load error goes back in the ready message, a
// step error as a kTagError message; either way the process then exits non-zero. A
// coordinator or peer that dies or stalls is noticed through the heartbeat table and
// ends the process too, so no stage outlives its run.
//
// load_stage() is the load half on its own: `cascade generate` runs a plan of one stage
// on its own host in its own process with it, with no stage process to start.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <iosfwd>
#include <memory>
#include <string>

#include "comm/control.h"
#include "stage/model.h"

namespace cascade::comm {
class World;
}

namespace cascade::stage {

// Returns the process exit code.
int run_stage(comm::World& world, std::ostream& log);

// The device an assignment names ("cpu:N" computes on the CPU), on the host that plans.
at::Device assigned_device(const comm::Assignment& a);

struct LoadedStage {
  std::unique_ptr<Model> model;
  // ok, host, pid, cores, bytes; seconds from the call (device start included) and
  // device_start_s. connect_s is 0: channels are the caller's.
  comm::StageReady ready;
};
using LoadProgressFn = std::function<void(const comm::LoadProgress&)>;

// Does what the assignment says before a stage serves: pins this process to its cores
// and sets its thread count, starts `device`'s runtime, and loads its modules there
// (`progress`, if set, at most every half second and at the end). Messages about the
// load go to `log`. Throws on any failure, with the checkpoint's or device's message.
LoadedStage load_stage(const comm::Assignment& a, at::Device device, const std::string& host,
                       const LoadProgressFn& progress, std::ostream& log);

}  // namespace cascade::stage
