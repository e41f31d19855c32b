// The stage process (DESIGN §1, §5): what `cascade stage` and ranks 1..S under mpirun
// run. It receives its assignment from the coordinator over MPI, loads only its own
// modules (reporting progress), opens its channels, reports ready, and then serves
// steps in route order until a shutdown step has passed through all its hops.
//
// Failures are reported, not hidden: a load error goes back in the ready message, a
// step error as a kTagError message; either way the process then exits non-zero. A
// coordinator or peer that dies or stalls is noticed through the heartbeat table and
// ends the process too, so no stage outlives its run.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace cascade::comm {
class World;
}

namespace cascade::stage {

// The assignment's wire version (the JSON's "version").
constexpr int kAssignmentVersion = 2;

// One end of a hop, as seen from the stage.
struct Link {
  int peer = 0;           // rank at the other end (0 = coordinator)
  std::string transport;  // "shm" | "mpi" | "nccl"
  std::string name;       // shm segment name
  int tag = 0;            // MPI tag of the hop
};

// One visit of the route to this stage: receive on `in`, run modules [begin, end),
// send on `out`. A stage that the route visits twice has two hops.
struct Hop {
  int64_t begin = 0, end = 0;
  Link in, out;
};

// What the coordinator tells a stage (sent as JSON over MPI, tag kTagAssign).
struct Assignment {
  int rank = 0;
  std::string label;        // "stage 2 (rank 2, cpu:1)", for messages
  std::string job;          // names the run's shm segments
  std::string heartbeats;   // the heartbeat table's shm name
  std::string exit_reason;  // non-empty: do not load, exit with this message (e.g. wrong -np)
  std::string model_dir, dtype, device;
  std::vector<int64_t> modules, disk_modules;
  std::string offload_folder;
  int64_t kv_slots = 1, max_seq_len = 2048;
  int threads = 0;
  double heartbeat_timeout = 5, step_timeout = 300;
  size_t ring_bytes = 16 << 20;
  bool trace = false;
  std::vector<int64_t> streamed_modules;  // cpu/disk-tier modules this CUDA stage streams in
  bool cuda_graphs = true;                // runtime.cuda_graphs
  bool int8 = false;                      // [quantization] mode = "int8"
  double int8_threshold = 6.0;
  std::vector<std::string> int8_skip;    // record compute/send/recv spans and send them after the shutdown step
  std::vector<Hop> hops;                 // in route order
  std::vector<std::string> rank_labels;  // by rank, 0 = "the coordinator"
};

nlohmann::json to_json(const Assignment& a);
// Throws std::invalid_argument naming a missing or mistyped field, or a version mismatch.
Assignment assignment_from_json(const nlohmann::json& j);

// Returns the process exit code.
int run_stage(comm::World& world, std::ostream& log);

}  // namespace cascade::stage
