// Cascade's configuration: the TOML schema of DESIGN §11, parsed into typed structs.
//
// load_config() reads a file, applies `--set key=value` overrides, and validates
// everything before returning, so the rest of the program never sees a bad value.
// Every error is a ConfigError whose message names the source (file or --set), the
// line, and the dotted key. Config values are plain data: copy them freely; nothing
// here is shared or mutable after loading.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace cascade::config {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A device as config files name it: "cuda:0" or "0", "cpu" (= "cpu:0"), "cpu:1", "disk".
struct DeviceName {
  enum class Kind { kCuda, kCpu, kDisk };
  Kind kind = Kind::kCpu;
  int index = 0;

  std::string str() const;  // canonical spelling: "cuda:0", "cpu:0", "disk"
  bool is_gpu() const { return kind == Kind::kCuda; }
  bool operator==(const DeviceName& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const DeviceName& o) const { return !(*this == o); }
  bool operator<(const DeviceName& o) const { return kind != o.kind ? kind < o.kind : index < o.index; }
};
// Throws std::invalid_argument naming the text and the accepted forms.
DeviceName parse_device(const std::string& text);

// placement.offload_compute taken apart: "auto" and "cpu" stream to no GPU; "cuda:N"
// streams every offloaded module to GPU N; "cpu+cuda:N" (hybrid) streams part of them.
struct OffloadCompute {
  bool hybrid = false;
  std::optional<DeviceName> gpu;  // a CUDA device where set
};
// Throws std::invalid_argument for any other text, or a device that is not a GPU.
OffloadCompute parse_offload_compute(const std::string& text);

enum class Strategy { kAuto, kBalanced, kBalancedLow0, kSequential };
enum class Mode { kSequential, kPipeline };

struct MemoryBudget {
  DeviceName device;
  std::optional<uint64_t> bytes;  // nullopt = unlimited
};

struct ModelSection {
  std::string path;            // checkpoint directory, absolute after loading
  std::string dtype = "auto";  // auto | float32 | bfloat16 | float16
};

// placement.experts: where a mixture of experts' expert blocks go (planner/plan.h).
enum class ExpertPlacement { kAuto, kOffload, kWithLayer };
const char* to_string(ExpertPlacement e);

constexpr int kMinStreamSlots = 2, kMaxStreamSlots = 8, kAutoStreamSlots = 0;

struct PlacementSection {
  Strategy strategy = Strategy::kAuto;
  std::vector<MemoryBudget> max_memory;                        // in file order
  std::vector<std::pair<std::string, DeviceName>> device_map;  // module prefix -> device
  std::string offload_folder = "offload";
  std::string offload_compute = "auto";  // cpu | cuda:N | cpu+cuda:N | auto (planner/plan.h)
  std::optional<double> streamed_share;  // cpu+cuda:N: share of offloaded modules streamed; unset = cost model
  // GPU slots that offloaded modules stream through (planner/plan.h): kMinStreamSlots to
  // kMaxStreamSlots, or kAutoStreamSlots ("auto": the cost model's choice).
  int stream_slots = 2;
  ExpertPlacement experts = ExpertPlacement::kAuto;
};

struct RuntimeSection {
  Mode mode = Mode::kSequential;
  int microbatches = 0;   // 0 = number of stages
  int prefill_chunk = 0;  // prompt tokens per step in pipeline mode; 0 = 128 (sequential: whole prompts)
  int max_batch = 16;     // KV slots
  int max_seq_len = 2048;
  int threads_per_stage = 0;  // 0 = share the cores evenly
  // A stage whose heartbeat is older than this is reported stalled (seconds).
  double heartbeat_timeout = 5.0;
  // The longest one step (one hop of it) may take before it is an error (seconds).
  double step_timeout = 300.0;
  // Decode steps of GPU stages replay CUDA graphs, one per batch/length bucket.
  bool cuda_graphs = true;
  // Stages run on cores of their own, from the coordinator's affinity mask: each
  // CPU-computing stage on as many as its threads, GPU stages on the rest. A stage
  // whose host lacks the cores it was given runs on those it started with. Off by
  // default: on the H100 machine's host a hybrid offload decoded 7% slower at batch 16
  // pinned (GPU stages' copies on the two cores left) and no faster at batch 1
  // (docs/performance.md, session 27); without it the default thread counts already
  // keep stages from oversubscribing the cores.
  bool pin_cores = false;
};

struct QuantizationSection {
  std::string mode = "none";  // none | int8
  double threshold = 6.0;
  std::vector<std::string> skip_modules = {"lm_head"};
};

struct ServerSection {
  std::string socket = "cascade.sock";
  std::string tcp;  // "host:port"; empty = off
  std::string api_key;
  uint64_t max_request_bytes = 1 << 20;
  int max_connections = 256;
  // Connections that have not sent a whole request (new, idle between requests, or
  // mid-header): past this many, or at max_connections, the oldest is dropped first.
  int max_pending_connections = 128;
  int max_restarts = 5;          // stage restarts allowed per hour when a stage fails; 0 = never
  int max_tokens = 2048;         // cap on a request's max_tokens (also bounded by max_seq_len)
  int max_queue = 64;            // requests waiting for a KV slot; past it: 429
  double header_timeout = 10.0;  // seconds to receive a request's header
  double idle_timeout = 60.0;    // seconds a keep-alive connection may sit idle
  double shutdown_grace = 30.0;  // seconds in-flight requests get to finish on SIGTERM
};

struct Config {
  ModelSection model;
  PlacementSection placement;
  RuntimeSection runtime;
  QuantizationSection quantization;
  ServerSection server;
  std::string source;  // the file it came from ("" when built from defaults)
};

// Reads and validates `path`, then applies overrides of the form "section.key=value"
// (the value is TOML: `runtime.max_batch=8`, `model.dtype=bfloat16` or `model.dtype="bfloat16"`).
// Relative paths written in the file resolve against the file's folder; those given in
// overrides resolve against the working directory.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The same from TOML text; `source_name` is used in messages and `base_dir` for relative paths.
Config parse_config(const std::string& toml_text, const std::string& source_name, const std::string& base_dir,
                    const std::vector<std::string>& overrides = {});

// CASCADE_<SECTION>_<KEY>=value variables of the environment as overrides
// ("section.key=value"), e.g. CASCADE_SERVER_API_KEY or CASCADE_RUNTIME_MAX_BATCH. Other
// CASCADE_* variables are not config keys and are left alone; one that names a section
// but no key of it is a ConfigError naming the variable.
std::vector<std::string> env_overrides();

// A command's config: the file at `path` when given, else defaults with
// [model] path = `model_dir`; then the environment's overrides, then `overrides` (the
// command line), each later one winning. Throws ConfigError.
Config resolve_config(const std::string& path, const std::string& model_dir, const std::vector<std::string>& overrides);

const char* to_string(Strategy s);
const char* to_string(Mode m);

}  // namespace cascade::config
