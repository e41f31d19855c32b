// A loaded model, or the part of one that a stage runs: a set of modules (in
// execution order), their weights on one compute device, and the KV cache of their
// decoder layers.
//
// Ownership: Model owns its weights (converted copies; tied tensors are loaded once and
// shared) and its KvCache; it keeps the Checkpoint alive. Thread-safety: none — one
// step loop drives a Model; load() may run on any thread.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "stage/batch.h"
#include "stage/decode_graphs.h"
#include "stage/family.h"
#include "stage/kv_cache.h"
#include "stage/model_config.h"
#include "stage/weights/device_upload.h"
#include "stage/weights/weight_stream.h"

namespace cascade::storage {
class Checkpoint;
class DiskTier;
}  // namespace cascade::storage

namespace cascade::stage {

// The checkpoint's modules in execution order, and its config, from config.json and
// the safetensors headers alone (no tensor data is read).
struct ModelDescription {
  ModelConfig config;
  std::vector<ModuleSpec> modules;
};
ModelDescription describe(const storage::Checkpoint& ck);

// "auto" -> config.json's torch_dtype (or "dtype"), else the dtype of the stored
// embedding; otherwise float32 | bfloat16 | float16. Throws std::invalid_argument.
at::ScalarType resolve_dtype(const std::string& requested, const storage::Checkpoint& ck);
at::ScalarType resolve_dtype(const std::string& requested, const storage::Checkpoint& ck, const ModelDescription& d);

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  std::vector<int64_t> modules;  // indices into describe().modules; empty = all
  // Modules on the disk tier (a subset of `modules`): their weights stay on disk and
  // are paged in one module ahead of use (storage::DiskTier; CPU compute only).
  std::vector<int64_t> disk_modules;
  // Modules computed on a CUDA `device` whose weights stay in host memory (pinned; disk-
  // tier ones mapped) and are copied in for each step through the GPU slots
  // (stage/weights/weight_stream.h). Every disk module of a CUDA model must be one.
  std::vector<int64_t> streamed_modules;
  int stream_slots = 2;  // the GPU slots they go through (WeightStream::create)
  std::string offload_folder = "offload";
  // The run's options as the config gives them. Read here: runtime.max_batch (KV
  // slots), runtime.max_seq_len, runtime.cuda_graphs (decode steps on a CUDA device
  // replay CUDA graphs where the modules allow it, stage/decode_graphs.h).
  config::RuntimeSection runtime = small_runtime();
  // quantization.mode = "int8": the weights each family marks quantizable are held as
  // int8 with per-row scales (stage/kernels/quant.h), except in modules whose name
  // contains an entry of skip_modules; disk-tier ones are stored int8 in the offload
  // folder. threshold 0 = weight-only.
  config::QuantizationSection quantization;
  // Called after each module loads with (bytes so far, bytes in all); may be empty.
  std::function<void(uint64_t, uint64_t)> progress;
  std::ostream* log = nullptr;  // offload-folder decisions; nullptr = silent

  bool int8() const { return quantization.mode == "int8"; }
  // One KV slot of 2048 positions: what a single generation needs.
  static config::RuntimeSection small_runtime() {
    config::RuntimeSection r;
    r.max_batch = 1;
    return r;
  }
};

class Model {
 public:
  static std::unique_ptr<Model> load(std::shared_ptr<const storage::Checkpoint> ck, const LoadOptions& opts);
  // The same for a checkpoint the caller has described already.
  static std::unique_ptr<Model> load(std::shared_ptr<const storage::Checkpoint> ck, const LoadOptions& opts,
                                     ModelDescription described);

  // Runs the loaded modules with index in [begin, end) (default: all of them).
  // input: token ids [tokens] int64 when the first module run is the embedding, else
  // hidden [tokens, hidden]. Returns logits [rows, vocab] when the LM head ran (a row per
  // sequence, or per token for sequences with all_logits: Batch::logit_rows), else
  // hidden [tokens, hidden]. Ids on the host are checked against the vocabulary (a
  // clear error, not a device fault); ids on a device are the caller's to check.
  at::Tensor forward(const at::Tensor& input, const Batch& batch, int64_t begin = 0, int64_t end = -1);

  // Copies KV positions [0, n) from slot `from` to slot `to` in the decoder layers of
  // modules [begin, end) this model holds (n > 1 sequences sharing a prompt).
  void copy_kv_prefix(int64_t from, int64_t to, int64_t n, int64_t begin = 0, int64_t end = -1);

  // Throws naming the first id of `ids` ([tokens] int64 on the host) outside the
  // vocabulary; rows in `skip` (ascending) are placeholders and not looked at.
  void check_ids(const at::Tensor& ids, const std::vector<int64_t>& skip = {}) const;

  const ModelConfig& config() const { return desc_.config; }
  const std::vector<ModuleSpec>& all_modules() const { return desc_.modules; }
  const std::vector<int64_t>& loaded() const { return loaded_; }
  KvCache& kv_cache() { return kv_; }
  const KvCache& kv_cache() const { return kv_; }
  at::ScalarType dtype() const { return opts_.dtype; }
  at::Device device() const { return opts_.device; }
  uint64_t weight_bytes() const { return weight_bytes_; }  // held in memory (disk tier excluded)
  uint64_t streamed_bytes() const { return stream_ ? stream_->host_bytes() : 0; }  // copied in per step
  int stream_slots() const { return stream_ ? stream_->slot_count() : 0; }         // GPU slots they go through
  WeightStream::ReadStats stream_reads() const { return stream_ ? stream_->read_stats() : WeightStream::ReadStats{}; }
  // The hop's output has left this stage: a streamed module's copy held back until
  // then starts (WeightStream::prefetch).
  void hop_sent() {
    if (stream_) stream_->prefetch();
  }
  // How loading to a GPU spent its time (all zero on a CPU stage).
  const DeviceUploader::Stats& upload_stats() const { return upload_stats_; }
  // Stored bytes of the checkpoint tensors this model uses, however they are served
  // (loaded, mapped from the shards, or from the offload folder): the stages of a
  // plan add up to the checkpoint, plus tied tensors counted once per stage.
  uint64_t source_bytes() const { return source_bytes_; }
  const storage::DiskTier* disk_tier() const { return disk_.get(); }
  size_t graphs_captured() const;  // CUDA graphs captured so far (0 without them)
  double graphs_capture_seconds() const;
  ~Model();

 private:
  Model() = default;
  // The steps of load(), in order (model.cpp says what each needs from the ones before).
  struct Placement;
  class Builder;
  void select_modules();
  Placement place() const;
  void open_stream(const Placement& p);
  void open_disk_tier(const Placement& p);
  void build_modules(const Placement& p);
  void finish_load();

  std::shared_ptr<const storage::Checkpoint> ck_;
  ModelDescription desc_;
  LoadOptions opts_;
  std::vector<int64_t> loaded_;                   // module indices, ascending
  std::vector<std::unique_ptr<Module>> modules_;  // parallel to loaded_
  KvCache kv_;
  uint64_t weight_bytes_ = 0, source_bytes_ = 0;
  DeviceUploader::Stats upload_stats_;
  std::unique_ptr<storage::DiskTier> disk_;
  std::vector<bool> on_disk_;             // parallel to loaded_
  std::unique_ptr<DecodeGraphs> graphs_;  // set when decode steps can be captured
  bool prompt_graphs_ = false;            // and prompts (DecodeGraphs::run_prompt) too
  std::unique_ptr<WeightStream> stream_;  // set when modules are streamed to the GPU
  std::vector<int64_t> stream_ordinal_;   // parallel to loaded_: k of a streamed module, else -1

  at::Tensor run_modules(at::Tensor x, StepContext& ctx, int64_t begin, int64_t end);
};

}  // namespace cascade::stage
