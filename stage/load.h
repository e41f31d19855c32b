// A stage's load half on its own (DESIGN §1, §5): pin to the assigned cores, start the
// device, load the assigned modules, and say where the time went. The stage process
// (stage/worker.h) calls it before it serves; `cascade generate` calls it to run a plan
// of one stage in its own process, with no stage process to start.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <iosfwd>
#include <memory>
#include <string>

#include "comm/control.h"
#include "stage/model.h"

namespace cascade::stage {

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
