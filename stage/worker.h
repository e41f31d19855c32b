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
// Its load half is stage/load.h.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <iosfwd>
#include <memory>
#include <string>

#include "comm/control.h"
#include "stage/load.h"

namespace cascade::comm {
class World;
}

namespace cascade::stage {

// Returns the process exit code.
int run_stage(comm::World& world, std::ostream& log);

}  // namespace cascade::stage
