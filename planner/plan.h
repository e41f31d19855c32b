// The planner: where every module lives and which process runs it (DESIGN §4).
//
// Input: a ModelDescriptor (sizes only; built from config.json and safetensors
// headers), per-device budgets, and the runtime shape (mode, max_batch, max_seq_len).
// Output: a Plan — the device map, the stage processes with their segments, the
// route a step takes, the transport of each hop, and what each device is charged.
//
// Unlike accelerate, every device is charged for the KV cache of the layers it
// computes and for its activation buffers, so a plan that fits also generates; a tied
// tensor is charged to every stage that uses it. make_plan() is a pure function: same
// input, same plan. It throws PlanError with the numbers when no plan fits.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"

namespace cascade::planner {

class PlanError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// kExperts: a mixture-of-experts layer's feed-forward half (router and experts), listed
// right after its layer's attention half and placeable apart from it.
enum class ModuleKind { kEmbedding, kLayer, kExperts, kNorm, kHead };

struct TensorSize {
  std::string name;
  uint64_t bytes = 0;       // at the compute dtype
  double read_share = 1.0;  // the share of it one token reads (an expert's: top_k/E)
};

struct ModuleInfo {
  std::string name;  // "model.layers.3"
  ModuleKind kind = ModuleKind::kLayer;
  std::vector<TensorSize> tensors;  // tied tensors appear in every module that uses them
  double flops_per_token = 0;       // forward FLOPs per token (compute balancing)
  uint64_t kv_bytes_per_token = 0;  // K+V bytes per cached token (decoder layers)
  bool int8 = false;                // its weights are LLM.int8 rows (a CPU reads them at cpu_compute_int8)

  uint64_t weight_bytes() const;
  double read_bytes() const;  // what a one-token step reads: sum of bytes x read_share
};

// What the planner knows of a model: sizes only, as the model's family declares them
// (daemon/planning.h builds it); no formula here assumes a layer's shape.
struct ModelDescriptor {
  std::string model_type;
  std::vector<ModuleInfo> modules;  // execution order
  // Transient activations per token of a step (the largest any module holds, in
  // bytes at the compute dtype), and the most attention heads whose float32 scores
  // one prefill chunk materialises at once.
  uint64_t act_bytes_per_token = 0;
  int64_t score_heads = 0;
  int64_t vocab_size = 0;  // the LM head's float32 logits per sequence
  int dtype_bytes = 2;
  // Whether the embedding may run on another stage than the layers after it: not in an
  // encoder-decoder model, whose decoder embeds its own tokens again.
  bool embedding_movable = true;

  uint64_t total_weight_bytes() const;  // distinct tensors
};

struct DeviceBudget {
  config::DeviceName device;
  std::optional<uint64_t> bytes;  // nullopt = unlimited
  bool measured = false;          // bytes came from this machine, not from the user
};

struct PlanRequest {
  ModelDescriptor model;
  std::vector<DeviceBudget> budgets;  // the devices that may be used
  config::Strategy strategy = config::Strategy::kAuto;
  config::Mode mode = config::Mode::kSequential;
  int64_t max_batch = 16;
  int64_t max_seq_len = 2048;
  // Who computes the offloaded modules (the last CPU device's and the disk tier's):
  //   cpu          an offload stage on the CPU
  //   cuda:N       an offload stage on GPU N, their weights streamed over PCIe each step
  //   cpu+cuda:N   both (hybrid): a share of the offloaded modules, spread evenly along
  //                the route, is streamed to GPU N while the CPU computes the rest, so
  //                that PCIe copies overlap CPU compute; the share is streamed_share, or
  //                the one the cost model predicts fastest
  //   auto         plans cpu and cpu+cuda:N for the first budgeted GPU and keeps the one
  //                the cost model predicts fastest (cpu+cuda:N resolves to cuda:N when
  //                it streams every offloaded module)
  // Where the GPUs cannot hold the whole model and the CPU computes (cpu, cpu+cuda:N,
  // auto), the embedding is placed after everything else, so it lands on the CPU and a
  // layer takes its room on the GPU: a token reads one row of the embedding, all of a
  // layer, and the CPU stage looks the rows up (never streamed).
  std::string offload_compute = "cpu";
  std::optional<double> streamed_share;  // cpu+cuda:N only: share of offloaded modules streamed
  // Where mixture-of-experts blocks (kExperts) go when the fill places modules:
  //   auto        attention, norms, routers, embeddings and head first (GPU first), then
  //               the experts in what is left, so experts are what gets offloaded
  //   offload     every expert block on the offload tier (the last CPU device, then
  //               disk), the rest as usual: llama.cpp's --cpu-moe
  //   with-layer  each expert block right after its attention, in execution order
  // A manual device_map and pipeline-mode balancing ignore it.
  config::ExpertPlacement experts = config::ExpertPlacement::kAuto;
  // The cost model's bandwidths, bytes/s. Defaults: pinned PCIe from DESIGN §10; the
  // disk read from the H100 host's stage lines of 2026-12-06 (15 readers, 33-42 GB/s);
  // the CPU's from a 16-core offload stage there (2026-11-24) computing 3.11 GiB of
  // layers at 12.0 tok/s; the GPU's from the H200's batch-1 decode (5.40 GB at ~360 tok/s).
  double pinned_h2d = 53.7e9;  // CPU-tier weights streamed from pinned memory
  double disk_read = 35e9;     // disk-tier weights read from the page cache (the stage's readers)
  int staging_buffers = 4;     // pinned buffers the disk tier is read ahead into (WeightStream's)
  // The staging buffers a stream holds: staging_buffers, at least one.
  int staging_buffer_count() const { return staging_buffers > 1 ? staging_buffers : 1; }
  // Device slots the offload GPU streams modules through (WeightStream's), each the size
  // of the largest streamed module: a copy runs up to stream_slots - 1 modules ahead.
  // config::kMinStreamSlots to kMaxStreamSlots, or config::kAutoStreamSlots: make_plan
  // plans with 2 to kMostAutoSlots and keeps the plan the cost model predicts fastest
  // (more slots let copies run further ahead but keep modules off the GPU).
  int stream_slots = 2;
  double cpu_compute = 40e9;    // weights a CPU stage gets through per second at batch 1
  double cpu_compute_int8 = 0;  // the same for int8 rows (ModuleInfo::int8); 0: cpu_compute
  // cpu_compute while pinned copies to a GPU run beside it (`cascade calibrate` measures
  // it): both read the host's memory. A step that streams charges CPU modules at this
  // rate (int8 ones scaled alike). 0: not measured, cpu_compute.
  double cpu_compute_shared = 0;
  // FLOP/s of a CPU stage at batch 16, from the H200 host's CPU-computed offload at
  // batch 16 (2026-12-03: 24 anchor layers, 60 GFLOP a step, in ~150 ms): beyond a few
  // tokens a CPU step is bound by arithmetic, not by reading weights.
  double cpu_flops = 400e9;
  // cpu_flops while pinned copies to a GPU run beside it (`cascade calibrate` measures
  // it); a step that streams charges CPU modules' FLOPs at this rate. 0: cpu_flops.
  double cpu_flops_shared = 0;
  double gpu_compute = 1.9e12;  // weights a GPU stage gets through per second at batch 1
  // Bytes/s the host's memory gives all readers together (the CPU stage's threads and the
  // copy engine's DMA): a step reads its CPU-computed and streamed host bytes through it,
  // whichever side reads them. 0: no such floor (not measured).
  double host_read = 0;
  std::vector<std::pair<std::string, config::DeviceName>> device_map;  // manual; empty = strategy
};

struct DeviceUsage {
  std::optional<uint64_t> budget;
  uint64_t weights = 0;
  uint64_t kv = 0;
  uint64_t activations = 0;
  uint64_t staging = 0;  // streaming slots (GPU), disk read-ahead buffers (host)
  uint64_t total() const { return weights + kv + activations + staging; }
};

// A contiguous run of modules, [begin, end) in execution order, run by one stage.
struct Segment {
  int64_t begin = 0;
  int64_t end = 0;
};

struct Stage {
  int rank = 0;                           // MPI rank (the coordinator is rank 0)
  config::DeviceName device;              // the device it computes on
  std::vector<config::DeviceName> tiers;  // where its weights live (e.g. cpu:0 and disk)
  std::vector<Segment> segments;          // in execution order
};

enum class Transport { kNccl, kShm, kMpi };
const char* to_string(Transport t);

// One hop of a step: from rank `from` to rank `to` (0 = coordinator).
struct Edge {
  int from = 0;
  int to = 0;
  Transport transport = Transport::kShm;
};

struct Plan {
  std::string offload_compute;                    // as resolved: cpu | cuda:N | cpu+cuda:N
  std::string offload_choice;                     // auto and cpu+cuda:N: the estimates behind the choice
  double predicted_step_s = 0;                    // a decode step of max_batch tokens, by the cost model
  int stream_slots = 2;                           // GPU slots a streaming stage copies through (reserved)
  std::vector<config::DeviceName> module_device;  // per module, parallel to model.modules
  std::vector<Stage> stages;                      // by rank (stages[i].rank == i + 1)
  std::vector<Segment> route_segments;            // the segments in execution order...
  std::vector<int> route_ranks;                   // ...and the rank that runs each
  std::vector<Edge> edges;                        // coordinator -> ... -> coordinator
  std::map<std::string, DeviceUsage> devices;     // by canonical device name, devices used or budgeted
};

Plan make_plan(const PlanRequest& req);

// The cost model: seconds of a decode step of max_batch tokens of `p` (a full batch),
// simulated along its route. Each module costs its bytes over its stage's rate (an
// embedding nothing: a step reads max_batch of its rows); on a CPU
// the bytes its tokens read (an expert block's chosen experts, at most all of them) or
// its FLOPs over cpu_flops, whichever is longer (a disk-tier one at least its bytes over
// disk_read; in a step that streams, at cpu_compute_shared and cpu_flops_shared); a
// streamed module waits for its copy, which starts once the streamed module
// p.stream_slots - 1 places before it starts computing (its slot is then free: with two slots, the module before) and
// after the copy before (one copy engine), so copies overlap the CPU stage's compute between them; where every streamed
// module fits the slots at once, each is copied only once. A disk-tier module's copy also waits for its read into a
// staging buffer: the readers read one module at a time, into a buffer whose last copy has ended, once the streamed
// module staging_buffers places before it has started computing (WeightStream reads that
// far ahead). Each hop between stages costs kHopSeconds.
// The second of two simulated steps is returned (the first has no copy in flight), or,
// where longer, the step's streamed bytes over pinned_h2d (copies that ran ahead into
// the next step fall outside its span, yet one copy engine moves them all), or, where
// host_read is set, the step's host bytes (read by the CPU stages or streamed from RAM)
// over host_read: the two sides share one memory bus.
double predicted_step_seconds(const PlanRequest& req, const Plan& p);
constexpr double kHopSeconds = 50e-6;  // one activation hop at batch 1 (an estimate)
constexpr int kMostAutoSlots = 4;      // stream_slots "auto" tries 2 to this (measured up to 4)

// The hf_device_map spelling of a device: 0 for cuda:0, "cpu" for cpu:0, "cpu:1", "disk".
std::string hf_device(const config::DeviceName& d);

}  // namespace cascade::planner
