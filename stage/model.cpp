#include "stage/model.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "config/env.h"
#include "stage/kernels/cpu_gemv.h"
#include "stage/kernels/quant.h"
#include "stage/weights/device_upload.h"
#include "storage/checkpoint.h"
#include "storage/compat.h"
#include "storage/offload.h"

namespace cascade::stage {

ModelDescription describe(const storage::Checkpoint& ck) {
  const auto& j = ck.config();
  if (!j.contains("model_type")) throw ModelConfigError(ck.dir() + "/config.json: 'model_type' is missing");
  if (!j["model_type"].is_string())
    throw ModelConfigError(ck.dir() + "/config.json: 'model_type' must be a string, not " +
                           std::string(j["model_type"].type_name()));
  const std::string model_type = j["model_type"].get<std::string>();
  const Family& f = find_family(model_type);
  ModelDescription d;
  try {
    d.config = f.parse_config(j);
    d.config.json = j;
    cfg::check_model_config(d.config);
  } catch (const ModelConfigError& e) {
    throw ModelConfigError(ck.dir() + "/" + e.what());
  }
  d.modules = f.modules(d.config, ck);
  for (const auto& m : d.modules) {
    for (const auto& t : m.tensors) ck.info(t);  // every tensor a module needs must exist
  }
  return d;
}

at::ScalarType resolve_dtype(const std::string& requested, const storage::Checkpoint& ck) {
  if (requested != "auto") return storage::parse_dtype(requested);
  return resolve_dtype(requested, ck, describe(ck));
}

at::ScalarType resolve_dtype(const std::string& requested, const storage::Checkpoint& ck, const ModelDescription& d) {
  if (requested != "auto") return storage::parse_dtype(requested);
  const auto& j = ck.config();
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (j.contains(key) && j[key].is_string()) {
      try {
        return storage::parse_dtype(j[key].get<std::string>());
      } catch (const std::invalid_argument&) {
      }
    }
  }
  const at::ScalarType stored = ck.info(d.modules.front().tensors.front()).dtype;
  return at::isFloatingType(stored) ? stored : at::kFloat;
}

// Which loaded modules, and which of their tensors, live where. Built once by place().
struct Model::Placement {
  std::set<int64_t> disk, streamed;      // module indices (subsets of loaded_)
  std::set<std::string> disk_names;      // tensors served from the disk tier
  std::set<std::string> streamed_names;  // tensors copied to the GPU per step
  uint64_t total = 0;                    // stored bytes of every distinct tensor loaded
  // Device bytes the Builder uploads one by one: every distinct tensor of a module that
  // is neither streamed nor on disk, in the compute dtype, LLM.int8 modules left out
  // (they are quantized, not uploaded).
  uint64_t uploaded = 0;
};

std::unique_ptr<Model> Model::load(std::shared_ptr<const storage::Checkpoint> ck, const LoadOptions& opts) {
  ModelDescription d = describe(*ck);
  return load(std::move(ck), opts, std::move(d));
}

std::unique_ptr<Model> Model::load(std::shared_ptr<const storage::Checkpoint> ck, const LoadOptions& opts,
                                   ModelDescription described) {
  // Before any CPU matmul of this process (AMX: see cpu_gemv.h).
  const std::string amx = enable_cpu_matrix_units();
  if (opts.log && !amx.empty() && opts.device.is_cpu()) *opts.log << "cascade: " << amx << "\n";
  if (opts.device.is_cpu() && opts.dtype == at::kHalf && !compat::kCpuHalfMatmul) {
    throw std::invalid_argument(std::string("float16 compute on CPU needs LibTorch >= 2.1 (this build has ") +
                                compat::kTorchVersion + "); use bfloat16 or float32");
  }
  std::unique_ptr<Model> m(new Model());
  m->ck_ = ck;
  m->opts_ = opts;
  m->desc_ = std::move(described);
  m->select_modules();
  const Placement p = m->place();
  m->open_stream(p);
  m->open_disk_tier(p);
  m->build_modules(p);
  m->finish_load();
  return m;
}

// loaded_: the requested module indices, sorted and checked.
void Model::select_modules() {
  const int64_t n = static_cast<int64_t>(desc_.modules.size());
  if (opts_.modules.empty()) {
    for (int64_t i = 0; i < n; ++i) loaded_.push_back(i);
    return;
  }
  loaded_ = opts_.modules;
  std::sort(loaded_.begin(), loaded_.end());
  loaded_.erase(std::unique(loaded_.begin(), loaded_.end()), loaded_.end());
  TORCH_CHECK(loaded_.front() >= 0 && loaded_.back() < n, "module index out of range [0, ", n, ")");
}

// Checks the disk and streamed module lists and splits the tensors by where they live:
// a tensor shared with a memory-resident module (a tied embedding) stays in memory.
Model::Placement Model::place() const {
  Placement p;
  p.disk.insert(opts_.disk_modules.begin(), opts_.disk_modules.end());
  p.streamed.insert(opts_.streamed_modules.begin(), opts_.streamed_modules.end());
  auto loaded = [&](int64_t i) { return std::binary_search(loaded_.begin(), loaded_.end(), i); };
  for (int64_t i : p.disk) TORCH_CHECK(loaded(i), "disk module ", i, " is not among the modules to load");
  for (int64_t i : p.streamed) TORCH_CHECK(loaded(i), "streamed module ", i, " is not among the modules to load");
  TORCH_CHECK(p.streamed.empty() || opts_.device.is_cuda(), "streamed modules need a CUDA compute device, not ",
              opts_.device.str());
  for (int64_t i : p.disk) {
    TORCH_CHECK(opts_.device.is_cpu() || p.streamed.count(i), "disk-tier module ", i, " computed on ",
                opts_.device.str(), " must be streamed");
  }
  std::set<std::string> seen, uploaded;
  for (int64_t i : loaded_) {
    const ModuleSpec& spec = desc_.modules[i];
    const bool upload = !p.streamed.count(i) && !p.disk.count(i) &&
                        !(opts_.int8() && int8_module(spec, opts_.quantization.skip_modules));
    for (const auto& t : spec.tensors) {
      if (seen.insert(t).second) p.total += ck_->info(t).nbytes();
      if (upload && uploaded.insert(t).second) p.uploaded += ck_->info(t).numel() * at::elementSize(opts_.dtype);
      if (p.disk.count(i)) p.disk_names.insert(t);
      if (p.streamed.count(i)) p.streamed_names.insert(t);
    }
  }
  for (int64_t i : loaded_) {
    for (const auto& t : desc_.modules[i].tensors) {
      if (!p.disk.count(i)) p.disk_names.erase(t);
      if (!p.streamed.count(i)) p.streamed_names.erase(t);
    }
  }
  return p;
}

// The plan's GPU slots (opts_.stream_slots): each holds the largest streamed module, each tensor
// aligned, int8 ones as int8 rows plus float scales.
void Model::open_stream(const Placement& p) {
  if (p.streamed_names.empty()) return;
  auto align = [](uint64_t b) { return (b + WeightStream::kAlign - 1) / WeightStream::kAlign * WeightStream::kAlign; };
  uint64_t slot = 0;
  for (int64_t i : p.streamed) {
    const ModuleSpec& spec = desc_.modules[i];
    const bool q = opts_.int8() && int8_module(spec, opts_.quantization.skip_modules);
    uint64_t b = 0;
    for (const auto& t : spec.tensors) {
      if (!p.streamed_names.count(t)) continue;
      const storage::TensorInfo& info = ck_->info(t);
      const uint64_t numel = static_cast<uint64_t>(info.numel());
      const Int8Layout layout = q ? spec.int8_layout(t) : Int8Layout::kNone;
      if (layout != Int8Layout::kNone)
        b += align(numel) + align(int8_bytes(info.shape, layout) - numel);
      else
        b += align(numel * at::elementSize(opts_.dtype));
    }
    slot = std::max(slot, b);
  }
  stream_ = WeightStream::create(opts_.device, slot, opts_.stream_slots);
}

// The disk tier: the shards themselves, or converted copies in the offload folder.
// Under LLM.int8 it holds the quantized projections too (int8 + scales), so a
// disk-tier layer reads half the bytes.
void Model::open_disk_tier(const Placement& p) {
  if (p.disk_names.empty()) return;
  std::vector<std::string> int8_names;
  for (int64_t i : p.disk) {
    const ModuleSpec& spec = desc_.modules[i];
    if (!opts_.int8() || !int8_module(spec, opts_.quantization.skip_modules)) continue;
    for (const auto& t : spec.tensors)
      if (p.disk_names.count(t) && spec.int8_layout(t) != Int8Layout::kNone) int8_names.push_back(t);
  }
  std::map<std::string, Int8Layout> layouts;
  for (int64_t i : p.disk) layouts.insert(desc_.modules[i].int8.begin(), desc_.modules[i].int8.end());
  auto quantize = [layouts](const std::string& name, const at::Tensor& w) {
    Int8Rows r = quantize_rows(w, layouts.at(name));
    return std::make_pair(r.q, r.scale);
  };
  std::ostringstream sink;
  disk_ = storage::DiskTier::open(ck_, {p.disk_names.begin(), p.disk_names.end()}, opts_.dtype, opts_.offload_folder,
                                  opts_.log ? *opts_.log : sink, int8_names, quantize);
}

// Serves the weights a family asks for while a module is built: from the disk tier, the
// GPU stream, or loaded (converted, quantized, uploaded) once and cached, so tied
// tensors are shared. Set `module` before each family.load().
class Model::Builder {
 public:
  Builder(Model& m, const Placement& p) : m_(m), p_(p), upload_(DeviceUploader::create(m.opts_.device)) {
    if (upload_) upload_->reserve(p.uploaded);
  }

  const ModuleSpec* spec = nullptr;  // the module being built
  int64_t ordinal = -1;              // its streamed-module number, or -1
  bool int8 = false;                 // LLM.int8 quantizes its declared weights
  uint64_t done = 0;                 // stored bytes loaded so far

  at::Tensor get(const std::string& name, const std::vector<int64_t>& expected) {
    auto it = cache_.find(name);
    // A tensor read by two modules (a tied head, T5's shared bias tables) is loaded once,
    // unless the first one streams it: its view lives in that module's GPU slot, so
    // another module gets a view of its own slot (from the same pinned host copy).
    if (it != cache_.end() && (it->second.ordinal < 0 || it->second.ordinal == ordinal)) return it->second.t;
    const bool again = it != cache_.end();
    if (name.size() > 6 && name.compare(name.size() - 6, 6, ":scale") == 0) {
      throw std::logic_error("no int8 scale for " + name);  // asked before its weight
    }
    const storage::TensorInfo& info = m_.ck_->info(name);
    if (!expected.empty() && info.shape != expected) {
      throw storage::StorageError(m_.ck_->file_of(name).path() + ": tensor '" + name + "' has shape " +
                                  storage::shape_str(info.shape) + " but config.json implies " +
                                  storage::shape_str(expected));
    }
    const bool stream = ordinal >= 0 && p_.streamed_names.count(name);
    const at::Tensor t = stream ? streamed(name, info) : resident(name, info);
    if (!again) {
      m_.source_bytes_ += info.nbytes();
      done += info.nbytes();
    }
    cache_[name] = {t, stream ? ordinal : -1};
    return t;
  }

  void finish() {
    if (upload_) {
      upload_->finish();
      m_.upload_stats_ = upload_->stats();
    }
    cache_.clear();   // the modules hold their weights now; finalize() may replace them
    pinned_.clear();  // the stream holds its sources
  }

 private:
  Int8Layout layout(const std::string& name) const { return int8 ? spec->int8_layout(name) : Int8Layout::kNone; }

  // LLM.int8 at load: on the compute device when it is a GPU (the CPU would take ~10x
  // longer), from the stored values converted to float32 either way.
  Int8Rows quantize(const std::string& name, const storage::TensorInfo& info) const {
    const at::Tensor w = m_.opts_.device.is_cuda() && at::isFloatingType(info.dtype)
                             ? m_.ck_->load(name, info.dtype).to(m_.opts_.device)
                             : m_.ck_->load(name, at::kFloat);
    return quantize_rows(w, layout(name));
  }

  // In host memory, a view of its GPU slot; disk-tier ones read from their file by the
  // stream's readers.
  at::Tensor streamed(const std::string& name, const storage::TensorInfo& info) {
    WeightStream& s = *m_.stream_;
    if (m_.disk_ && m_.disk_->has(name)) {
      auto add_disk = [&](const std::string& n) {
        const storage::DiskTier::FileRange r = m_.disk_->file_range(n);
        return s.add(ordinal, m_.disk_->get(n), r.path, r.offset);
      };
      const at::Tensor t = add_disk(name);
      if (m_.disk_->has(name + ":scale")) cache_[name + ":scale"] = {add_disk(name + ":scale"), ordinal};
      return t;
    }
    if (layout(name) != Int8Layout::kNone) {
      if (!pinned_.count(name)) {
        Int8Rows r = quantize(name, info);
        pin(name, r.q.cpu());
        pin(name + ":scale", r.scale.cpu());
      }
      cache_[name + ":scale"] = {s.add(ordinal, pinned_.at(name + ":scale")), ordinal};
      return s.add(ordinal, pinned_.at(name));
    }
    if (!pinned_.count(name)) pin(name, m_.ck_->load(name, m_.opts_.dtype));
    return s.add(ordinal, pinned_.at(name));
  }

  // The one pinned host copy of a streamed tensor: every streamed module that reads it
  // (a tied head and its embedding, T5's shared bias tables) copies from it into its own
  // GPU slot.
  void pin(const std::string& key, const at::Tensor& host) {
    const at::Tensor& t = pinned_[key] = host.pin_memory();
    m_.weight_bytes_ += t.numel() * t.element_size();
  }

  // On the compute device for good, or a view of the disk tier's mapping.
  at::Tensor resident(const std::string& name, const storage::TensorInfo& info) {
    const LoadOptions& o = m_.opts_;
    if (m_.disk_ && m_.disk_->has(name)) {  // paged in when used
      if (m_.disk_->has(name + ":scale")) cache_[name + ":scale"] = {m_.disk_->get(name + ":scale"), -1};  // int8
      return m_.disk_->get(name);
    }
    at::Tensor t;
    if (layout(name) != Int8Layout::kNone) {
      Int8Rows r = quantize(name, info);
      cache_[name + ":scale"] = {r.scale.to(o.device), -1};
      m_.weight_bytes_ += r.scale.numel() * 4;
      t = r.q.to(o.device);
    } else if (upload_) {  // mapped shard (or converted copy) -> pinned chunks -> device
      const storage::SafetensorsFile& f = m_.ck_->file_of(name);
      t = info.dtype == o.dtype ? upload_->upload_file(f.path(), f.file_offset(info), info.shape, o.dtype)
                                : upload_->upload(m_.ck_->load(name, o.dtype));
    } else {
      t = m_.ck_->load(name, o.dtype).to(o.device);
    }
    m_.weight_bytes_ += t.numel() * t.element_size();
    return t;
  }

  Model& m_;
  const Placement& p_;
  std::unique_ptr<DeviceUploader> upload_;
  struct Cached {
    at::Tensor t;
    int64_t ordinal = -1;  // the streamed module whose GPU slot it is a view of; -1: resident
  };
  std::map<std::string, Cached> cache_;       // by tensor name ("<name>:scale" for int8 scales)
  std::map<std::string, at::Tensor> pinned_;  // streamed tensors' host copies, by the same names
};

// Builds every loaded module from its family, reporting progress after each.
void Model::build_modules(const Placement& p) {
  const Family& family = find_family(desc_.config.model_type);
  Builder b(*this, p);
  WeightSource weights{[&b](const std::string& n, const std::vector<int64_t>& e) { return b.get(n, e); },
                       opts_.quantization.threshold};
  int64_t streamed = 0;
  for (int64_t i : loaded_) {
    const ModuleSpec& spec = desc_.modules[i];
    b.spec = &spec;
    b.int8 = opts_.int8() && int8_module(spec, opts_.quantization.skip_modules);
    b.ordinal = p.streamed.count(i) ? streamed++ : -1;
    TORCH_CHECK(b.ordinal < 0 || stream_, "streamed module ", i, " on a build without CUDA");
    stream_ordinal_.push_back(b.ordinal);
    modules_.push_back(family.load(spec, desc_.config, weights));
    if (!modules_.back())
      throw ModelConfigError(std::string(family.name()) + " has no module of the kind of '" + spec.name + "'");
    on_disk_.push_back(p.disk.count(i) > 0);
    if (opts_.progress) opts_.progress(b.done, p.total);
  }
  b.finish();
  if (stream_) stream_->reserve(streamed);
}

// Lets memory-resident modules re-lay their weights out, then decides on CUDA graphs
// and allocates the KV cache of the loaded decoder layers.
void Model::finish_load() {
  for (size_t i = 0; i < modules_.size(); ++i)
    if (stream_ordinal_[i] < 0 && !on_disk_[i]) modules_[i]->finalize();
  const ModelConfig& c = desc_.config;
  // What a graph cannot hold: "dynamic" RoPE (frequencies computed on the host per
  // sequence), pages read from disk, streamed weights, modules that sync with the host.
  // (LLM.int8's outlier split has fixed shapes and no host sync, so int8 layers can be
  // captured.)
  bool capturable = c.rope.type != "dynamic" && !disk_ && !stream_;
  for (const auto& m : modules_) capturable = capturable && m->capturable();
  if (opts_.runtime.cuda_graphs && capturable) graphs_ = DecodeGraphs::create(opts_.device);
  // A prompt's graph is captured at its padded length: longrope picks its frequencies by
  // the sequence's length, which padding would change. CASCADE_PROMPT_GRAPHS=0: prompts
  // eagerly, to measure what the graphs gain.
  prompt_graphs_ = graphs_ && c.rope.type != "longrope" && config::env_flag("CASCADE_PROMPT_GRAPHS", true);
  std::vector<int64_t> layers;
  for (int64_t i : loaded_)
    if (desc_.modules[i].kind == ModuleKind::kDecoderLayer) layers.push_back(desc_.modules[i].layer);
  kv_ = KvCache(layers, opts_.runtime.max_batch, c.num_kv_heads, opts_.runtime.max_seq_len, c.head_dim, opts_.dtype,
                opts_.device, /*spare_slot=*/graphs_ != nullptr);
}

size_t Model::graphs_captured() const { return graphs_ ? graphs_->captured() : 0; }
double Model::graphs_capture_seconds() const { return graphs_ ? graphs_->capture_seconds() : 0; }

Model::~Model() = default;

void Model::check_ids(const at::Tensor& ids, const std::vector<int64_t>& skip) const {
  const at::Tensor c = ids.contiguous();
  const int64_t* v = c.data_ptr<int64_t>();
  const uint64_t vocab = static_cast<uint64_t>(desc_.config.vocab_size);
  // Runs between placeholders, each tested in one branch-free pass (a negative id is a
  // huge unsigned one); only a run with a bad id is walked again, to name it.
  int64_t from = 0;
  for (size_t k = 0; k <= skip.size(); ++k) {
    const int64_t to = std::min(k < skip.size() ? skip[k] : c.numel(), c.numel());
    bool bad = false;
    for (int64_t r = from; r < to; ++r) bad |= static_cast<uint64_t>(v[r]) >= vocab;
    for (int64_t r = from; bad && r < to; ++r)
      TORCH_CHECK(static_cast<uint64_t>(v[r]) < vocab, "token id ", v[r], " (row ", r, ") is out of range [0, ", vocab,
                  ")");
    from = to + 1;
  }
}

at::Tensor Model::forward(const at::Tensor& input, const Batch& batch, int64_t begin, int64_t end) {
  if (end < 0) end = static_cast<int64_t>(desc_.modules.size());
  TORCH_CHECK(input.size(0) == batch.total_tokens(), "input has ", input.size(0), " rows but the batch has ",
              batch.total_tokens(), " tokens");
  // Ids are checked on the host, where they arrive (the stage's ids channel keeps them
  // there): checking ids on a device would wait for the device. Ids already on a device
  // were put there by the runner, which checked them (StepRunner::run's fed steps).
  if (input.scalar_type() == at::kLong && input.is_cpu()) check_ids(input);
  const bool decode = !batch.seqs.empty() && batch.total_tokens() == static_cast<int64_t>(batch.seqs.size());
  const DecodeGraphs::Forward modules = [&](const at::Tensor& x, StepContext& ctx) {
    return run_modules(x, ctx, begin, end);
  };
  if (graphs_ && decode) return graphs_->run(input, batch, kv_, begin, end, modules);
  if (prompt_graphs_ && takes_prompt(batch, kv_.max_seq_len())) {
    at::Tensor out = graphs_->run_prompt(input, batch, kv_, begin, end, modules);
    if (out.defined()) return out;
  }
  // Batched decode attention only where launches are the cost (CUDA). On the CPU the
  // per-sequence path keeps a sequence's tokens independent of what it is batched with:
  // in bfloat16 the rounding of attention depends on its shapes, and a CPU stage is
  // bound by weight reads anyway.
  StepContext ctx{batch, batch.positions(opts_.device),
                  &kv_,  {},
                  {},    opts_.device.is_cuda() ? kv_.decode_index(batch, opts_.device) : DecodeIndex{}};
  return run_modules(input.to(opts_.device), ctx, begin, end);
}

void Model::copy_kv_prefix(int64_t from, int64_t to, int64_t n, int64_t begin, int64_t end) {
  if (end < 0) end = static_cast<int64_t>(desc_.modules.size());
  for (int64_t m : loaded_) {
    const int64_t layer = desc_.modules[m].layer;
    if (m >= begin && m < end && layer >= 0 && kv_.has_layer(layer)) kv_.copy_prefix(layer, from, to, n);
  }
}

at::Tensor Model::run_modules(at::Tensor x, StepContext& ctx, int64_t begin, int64_t end) {
  bool ran = false;
  const at::Tensor in = x;  // the caller's: never written (StepContext::input_spent)
  auto advise = [&](size_t i, bool need) {
    if (!disk_ || i >= loaded_.size() || !on_disk_[i]) return;
    for (const auto& t : desc_.modules[loaded_[i]].tensors) need ? disk_->will_need(t) : disk_->dont_need(t);
  };
  size_t last = 0;  // the hop's last module here: the next streamed copy waits for its output to leave
  for (size_t i = 0; i < loaded_.size(); ++i)
    if (loaded_[i] >= begin && loaded_[i] < end) last = i;
  for (size_t i = 0; i < loaded_.size(); ++i) {
    if (loaded_[i] < begin || loaded_[i] >= end) continue;
    if (!ran) advise(i, true);
    advise(i + 1, true);  // read the next disk-tier module while this one computes
    const ModuleSpec& spec = desc_.modules[loaded_[i]];
    if (spec.kind == ModuleKind::kEmbedding) {
      TORCH_CHECK(x.scalar_type() == at::kLong && x.dim() == 1, "the embedding takes token ids [tokens] int64");
    }
    const int64_t k = stream_ordinal_[i];
    if (k >= 0) stream_->acquire(k, i != last);  // its weights are in its GPU slot for these kernels
    ctx.input_spent = ran && !x.is_alias_of(in);
    x = modules_[i]->forward(x, ctx);
    if (k >= 0) stream_->release(k, i != last);
    advise(i, false);
    ran = true;
  }
  TORCH_CHECK(ran, "no loaded module lies in [", begin, ", ", end, ")");
  return x;
}

}  // namespace cascade::stage
