// The control protocol between the coordinator and its stages (DESIGN §6): the
// messages that are not steps. One codec for both ends, so a field is named once.
//
//   coordinator -> stage   kTagAssign  Assignment: what to load, how to connect, the options
//   stage -> coordinator   kTagLoad    LoadProgress while loading, then one StageReady
//   stage -> coordinator   kTagStats   StageStats now and then (~4 Hz)
//   stage -> coordinator   kTagError   StageFailure: a step failed; the stage then exits
//
// Every message is JSON with "type" and "version" (kControlVersion); a message from
// another build, of the wrong type or with a missing or mistyped field is rejected with
// std::invalid_argument naming the message and the field. Plain values; no sharing.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "config/config.h"

namespace cascade::comm {

constexpr int kControlVersion = 3;

// How the bytes of one hop travel (the planner picks one per edge).
enum class Transport { kShm, kMpi, kNccl };
const char* to_string(Transport t);

// One end of a hop, as seen from the stage.
struct Link {
  int peer = 0;  // rank at the other end (0 = coordinator)
  Transport transport = Transport::kShm;
  std::string name;  // shm segment name
  int tag = 0;       // MPI tag of the hop
};

// One visit of the route to a stage: receive on `in`, run modules [begin, end), send on
// `out`. A stage that the route visits twice has two hops.
struct Hop {
  int64_t begin = 0, end = 0;
  Link in, out;
};

struct Assignment {
  int rank = 0;
  std::string label;        // "stage 2 (rank 2, cpu:1)", for messages
  std::string job;          // names the run's shm segments
  std::string heartbeats;   // the heartbeat table's shm name
  std::string exit_reason;  // non-empty: do not load, exit with this message (e.g. wrong -np)
  std::string model_dir, dtype, device;
  std::vector<int64_t> modules;           // indices into the model's modules, ascending
  std::vector<int64_t> disk_modules;      // of those, on the disk tier
  std::vector<int64_t> streamed_modules;  // of those, cpu/disk-tier modules this CUDA stage streams in
  std::string offload_folder;
  int stream_slots = 2;    // GPU slots streamed_modules go through (the plan's, which it reserved)
  int threads = 0;         // intra-op threads; 0 = LibTorch's default
  std::vector<int> cores;  // non-empty: run on these cores (runtime.pin_cores); else as launched
  size_t ring_bytes = 16 << 20;
  bool trace = false;  // record compute/send/recv spans and send them after the shutdown step
  // The run's options, whole, as the config gives them (KV slots = runtime.max_batch).
  config::RuntimeSection runtime;
  config::QuantizationSection quantization;
  std::vector<Hop> hops;                 // in route order
  std::vector<std::string> rank_labels;  // by rank, 0 = "the coordinator"
};

struct LoadProgress {
  uint64_t bytes = 0, total = 0;
  double seconds = 0;
};

// Where a GPU stage's load time went (all zero on a CPU stage).
struct UploadTimes {
  uint64_t bytes = 0;
  double read_s = 0, dma_wait_s = 0, alloc_s = 0, finish_s = 0;
};

// A stage's answer to its assignment: loaded and connected (ok), or why not.
struct StageReady {
  bool ok = false;
  std::string error;  // when !ok
  std::string host;
  int pid = 0;
  int cores = 0;              // cores the process may run on
  std::string core_list;      // which, "0-7,12"; what pinning to Assignment::cores left
  double seconds = 0;         // assignment to ready, of which:
  double device_start_s = 0;  // starting the device's runtime (CUDA context); 0 on a CPU stage
  double connect_s = 0;       // opening the channels to the neighbours (the rest is the load)
  uint64_t source_bytes = 0, weight_bytes = 0, zero_copy_bytes = 0, folder_bytes = 0, kv_bytes = 0, streamed_bytes = 0;
  int stream_slots = 0;  // the GPU slots streamed_bytes go through; 0: streams nothing
  bool folder_rebuilt = false;
  UploadTimes upload;
};

struct StageStats {
  double busy = 0;  // seconds spent computing so far
  int64_t steps = 0;
};

struct StageFailure {
  std::string error;
};

std::string encode(const Assignment& m);
std::string encode(const LoadProgress& m);
std::string encode(const StageReady& m);
std::string encode(const StageStats& m);
std::string encode(const StageFailure& m);

// Each throws std::invalid_argument naming the message and what is wrong with it.
Assignment decode_assignment(const std::vector<uint8_t>& bytes);
std::variant<LoadProgress, StageReady> decode_load(const std::vector<uint8_t>& bytes);
StageStats decode_stats(const std::vector<uint8_t>& bytes);
StageFailure decode_failure(const std::vector<uint8_t>& bytes);

}  // namespace cascade::comm
