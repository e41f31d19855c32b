#include "stage/model.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "stage/device_upload.h"
#include "stage/quant.h"
#include "storage/checkpoint.h"
#include "storage/compat.h"
#include "storage/offload.h"

namespace cascade::stage {

ModelDescription describe(const storage::Checkpoint& ck) {
  const auto& j = ck.config();
  if (!j.contains("model_type") || !j["model_type"].is_string()) {
    throw ModelConfigError(ck.dir() + "/config.json: 'model_type' is missing");
  }
  const std::string model_type = j["model_type"].get<std::string>();
  const Family& f = find_family(model_type);
  ModelDescription d;
  try {
    d.config = f.parse_config(j);
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
  const auto& j = ck.config();
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (j.contains(key) && j[key].is_string()) {
      try {
        return storage::parse_dtype(j[key].get<std::string>());
      } catch (const std::invalid_argument&) {
      }
    }
  }
  const ModelDescription d = describe(ck);
  const at::ScalarType stored = ck.info(d.modules.front().tensors.front()).dtype;
  return at::isFloatingType(stored) ? stored : at::kFloat;
}

std::unique_ptr<Model> Model::load(std::shared_ptr<const storage::Checkpoint> ck, const LoadOptions& opts) {
  if (opts.device.is_cpu() && opts.dtype == at::kHalf && !compat::kCpuHalfMatmul) {
    throw std::invalid_argument(std::string("float16 compute on CPU needs LibTorch >= 2.1 (this build has ") +
                                compat::kTorchVersion + "); use bfloat16 or float32");
  }
  std::unique_ptr<Model> m(new Model());
  m->ck_ = ck;
  m->opts_ = opts;
  m->desc_ = describe(*ck);
  const Family& family = find_family(m->desc_.config.model_type);
  const int64_t n = static_cast<int64_t>(m->desc_.modules.size());
  if (opts.modules.empty()) {
    for (int64_t i = 0; i < n; ++i) m->loaded_.push_back(i);
  } else {
    m->loaded_ = opts.modules;
    std::sort(m->loaded_.begin(), m->loaded_.end());
    m->loaded_.erase(std::unique(m->loaded_.begin(), m->loaded_.end()), m->loaded_.end());
    TORCH_CHECK(m->loaded_.front() >= 0 && m->loaded_.back() < n, "module index out of range [0, ", n, ")");
  }

  for (int64_t i : opts.disk_modules) {
    TORCH_CHECK(std::binary_search(m->loaded_.begin(), m->loaded_.end(), i), "disk module ", i,
                " is not among the modules to load");
  }
  const std::set<int64_t> disk(opts.disk_modules.begin(), opts.disk_modules.end());
  const std::set<int64_t> streamed(opts.streamed_modules.begin(), opts.streamed_modules.end());
  for (int64_t i : streamed) {
    TORCH_CHECK(std::binary_search(m->loaded_.begin(), m->loaded_.end(), i), "streamed module ", i,
                " is not among the modules to load");
  }
  TORCH_CHECK(streamed.empty() || opts.device.is_cuda(), "streamed modules need a CUDA compute device, not ",
              opts.device.str());
  for (int64_t i : disk) {
    TORCH_CHECK(opts.device.is_cpu() || streamed.count(i), "disk-tier module ", i, " computed on ", opts.device.str(),
                " must be streamed");
  }
  uint64_t total = 0;
  std::set<std::string> disk_names, seen;
  for (int64_t i : m->loaded_) {
    for (const auto& t : m->desc_.modules[i].tensors) {
      if (seen.insert(t).second) total += ck->info(t).nbytes();
      if (disk.count(i)) disk_names.insert(t);
    }
  }
  for (int64_t i : m->loaded_) {  // a tensor shared with a memory-resident module stays in memory
    if (disk.count(i)) continue;
    for (const auto& t : m->desc_.modules[i].tensors) disk_names.erase(t);
  }
  // Streamed tensors: those of streamed modules that no device-resident module shares.
  std::set<std::string> streamed_names;
  for (int64_t i : streamed)
    streamed_names.insert(m->desc_.modules[i].tensors.begin(), m->desc_.modules[i].tensors.end());
  for (int64_t i : m->loaded_) {
    if (streamed.count(i)) continue;
    for (const auto& t : m->desc_.modules[i].tensors) streamed_names.erase(t);
  }
  if (!streamed_names.empty()) {
    // One slot holds the largest streamed module, each tensor aligned, int8 ones as
    // int8 rows plus float scales.
    auto align = [](uint64_t b) {
      return (b + WeightStream::kAlign - 1) / WeightStream::kAlign * WeightStream::kAlign;
    };
    uint64_t slot = 0;
    for (int64_t i : streamed) {
      const ModuleSpec& spec = m->desc_.modules[i];
      const bool q = opts.int8 && stage::int8_module(spec, opts.int8_skip);
      uint64_t b = 0;
      for (const auto& t : spec.tensors) {
        if (!streamed_names.count(t)) continue;
        const storage::TensorInfo& info = ck->info(t);
        int64_t numel = 1;
        for (int64_t d : info.shape) numel *= d;
        const Int8Layout layout = q ? int8_layout(t, info.shape.size()) : Int8Layout::kNone;
        if (layout != Int8Layout::kNone)
          b += align(static_cast<uint64_t>(numel)) + align(int8_bytes(info.shape, layout) - numel);
        else
          b += align(static_cast<uint64_t>(numel) * at::elementSize(opts.dtype));
      }
      slot = std::max(slot, b);
    }
    m->stream_ = WeightStream::create(opts.device, slot);
  }
  if (!disk_names.empty()) {
    // Under LLM.int8 the disk tier holds the quantized projections too (int8 + scales
    // in the offload folder), so a disk-tier layer reads half the bytes.
    std::vector<std::string> int8_names;
    for (int64_t i : disk) {
      const ModuleSpec& spec = m->desc_.modules[i];
      if (!opts.int8 || !stage::int8_module(spec, opts.int8_skip)) continue;
      for (const auto& t : spec.tensors)
        if (disk_names.count(t) && int8_layout(t, ck->info(t).shape.size()) != Int8Layout::kNone)
          int8_names.push_back(t);
    }
    auto quantize = [&](const std::string& name, const at::Tensor& w) {
      Int8Rows r = quantize_rows(w, int8_layout(name, ck->info(name).shape.size()));
      return std::make_pair(r.q, r.scale);
    };
    std::ostringstream sink;
    m->disk_ = storage::DiskTier::open(ck, {disk_names.begin(), disk_names.end()}, opts.dtype, opts.offload_folder,
                                       opts.log ? *opts.log : sink, int8_names, quantize);
  }

  std::unique_ptr<DeviceUploader> upload = DeviceUploader::create(opts.device);
  // Tied tensors (embed_tokens / lm_head) are loaded once per stage and shared.
  std::map<std::string, at::Tensor> cache;
  uint64_t done = 0;
  bool int8_module = false;  // the module being built takes int8 linear weights
  int64_t ordinal = -1;      // the module being built is streamed module `ordinal` (else -1)
  m->desc_.config.int8_threshold = opts.int8_threshold;
  // LLM.int8 at load: on the compute device when it is a GPU (the CPU would take ~10x
  // longer), from the stored values converted to float32 either way.
  auto quantize = [&](const std::string& name, const storage::TensorInfo& info) {
    const at::Tensor w = opts.device.is_cuda() && at::isFloatingType(info.dtype)
                             ? ck->load(name, info.dtype).to(opts.device)
                             : ck->load(name, at::kFloat);
    return quantize_rows(w, int8_layout(name, info.shape.size()));
  };
  WeightSource weights = [&](const std::string& name, const std::vector<int64_t>& expected) {
    auto it = cache.find(name);
    if (it == cache.end() && name.size() > 6 && name.compare(name.size() - 6, 6, ":scale") == 0) {
      throw std::logic_error("no int8 scale for " + name);  // asked before its weight
    }
    if (it == cache.end()) {
      const storage::TensorInfo& info = ck->info(name);
      if (!expected.empty() && info.shape != expected) {
        throw storage::StorageError(ck->file_of(name).path() + ": tensor '" + name + "' has shape " +
                                    storage::shape_str(info.shape) + " but config.json implies " +
                                    storage::shape_str(expected));
      }
      at::Tensor t;
      if (ordinal >= 0 && streamed_names.count(name)) {  // host memory, a view of its GPU slot
        if (m->disk_ && m->disk_->has(name)) {           // read from its file by the stream's readers
          auto add_disk = [&](const std::string& n) {
            const storage::DiskTier::FileRange r = m->disk_->file_range(n);
            return m->stream_->add(ordinal, m->disk_->get(n), r.path, r.offset);
          };
          t = add_disk(name);
          if (m->disk_->has(name + ":scale")) cache[name + ":scale"] = add_disk(name + ":scale");
        } else if (int8_module && int8_layout(name, info.shape.size()) != Int8Layout::kNone) {
          Int8Rows r = quantize(name, info);
          t = m->stream_->add(ordinal, r.q.cpu().pin_memory());
          cache[name + ":scale"] = m->stream_->add(ordinal, r.scale.cpu().pin_memory());
          m->weight_bytes_ += t.numel() + r.scale.numel() * 4;
        } else {
          t = m->stream_->add(ordinal, ck->load(name, opts.dtype).pin_memory());
          m->weight_bytes_ += t.numel() * t.element_size();
        }
      } else if (m->disk_ && m->disk_->has(name)) {
        t = m->disk_->get(name);  // a view of the mapping: paged in when used
        if (m->disk_->has(name + ":scale")) cache[name + ":scale"] = m->disk_->get(name + ":scale");  // int8
      } else if (int8_module && int8_layout(name, info.shape.size()) != Int8Layout::kNone) {
        Int8Rows r = quantize(name, info);
        t = r.q.to(opts.device);
        cache[name + ":scale"] = r.scale.to(opts.device);
        m->weight_bytes_ += t.numel() + r.scale.numel() * 4;
      } else if (upload) {  // mapped shard (or converted copy) -> pinned chunks -> device
        const storage::SafetensorsFile& f = ck->file_of(name);
        t = info.dtype == opts.dtype ? upload->upload_file(f.path(), f.file_offset(info), info.shape, opts.dtype)
                                     : upload->upload(ck->load(name, opts.dtype));
        m->weight_bytes_ += t.numel() * t.element_size();
      } else {
        t = ck->load(name, opts.dtype).to(opts.device);
        m->weight_bytes_ += t.numel() * t.element_size();
      }
      m->source_bytes_ += info.nbytes();
      done += info.nbytes();
      it = cache.emplace(name, t).first;
    }
    return it->second;
  };
  std::vector<int64_t> layers;
  for (int64_t i : m->loaded_) {
    const ModuleSpec& spec = m->desc_.modules[i];
    int8_module = opts.int8 && stage::int8_module(spec, opts.int8_skip);
    ordinal = streamed.count(i)
                  ? static_cast<int64_t>(std::count_if(m->stream_ordinal_.begin(), m->stream_ordinal_.end(),
                                                       [](int64_t k) { return k >= 0; }))
                  : -1;
    TORCH_CHECK(ordinal < 0 || m->stream_, "streamed module ", i, " on a build without CUDA");
    m->stream_ordinal_.push_back(ordinal);
    m->modules_.push_back(family.load(spec, m->desc_.config, weights));
    m->on_disk_.push_back(disk.count(i) > 0);
    if (spec.kind == ModuleKind::kDecoderLayer) layers.push_back(spec.layer);
    if (opts.progress) opts.progress(done, total);
  }
  if (upload) {
    upload->finish();
    m->upload_stats_ = upload->stats();
  }
  cache.clear();  // the modules hold their weights now; finalize() may replace them
  for (size_t p = 0; p < m->modules_.size(); ++p)
    if (m->stream_ordinal_[p] < 0 && !m->on_disk_[p]) m->modules_[p]->finalize();
  const ModelConfig& c = m->desc_.config;
  // What a graph cannot hold: "dynamic" RoPE (frequencies computed on the host per
  // sequence), pages read from disk, streamed weights. (LLM.int8's outlier split has
  // fixed shapes and no host sync, so int8 layers can be captured.)
  const bool capturable = c.rope.type != "dynamic" && !m->disk_ && !m->stream_;
  if (opts.cuda_graphs && capturable) m->graphs_ = DecodeGraphs::create(opts.device);
  m->kv_ = KvCache(layers, opts.kv_slots, c.num_kv_heads, opts.max_seq_len, c.head_dim, opts.dtype, opts.device,
                   /*spare_slot=*/m->graphs_ != nullptr);
  return m;
}

size_t Model::graphs_captured() const { return graphs_ ? graphs_->captured() : 0; }
double Model::graphs_capture_seconds() const { return graphs_ ? graphs_->capture_seconds() : 0; }

Model::~Model() = default;

at::Tensor Model::forward(const at::Tensor& input, const Batch& batch, int64_t begin, int64_t end) {
  if (end < 0) end = static_cast<int64_t>(desc_.modules.size());
  TORCH_CHECK(input.size(0) == batch.total_tokens(), "input has ", input.size(0), " rows but the batch has ",
              batch.total_tokens(), " tokens");
  if (input.scalar_type() == at::kLong && input.numel() > 0) {  // checked where the ids are: no device sync
    const at::Tensor ids = input.cpu();
    const int64_t vocab = desc_.config.vocab_size;
    TORCH_CHECK(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < vocab, "token id out of range [0, ",
                vocab, ")");
  }
  const bool decode = !batch.seqs.empty() && batch.total_tokens() == static_cast<int64_t>(batch.seqs.size());
  if (graphs_ && decode) {
    return graphs_->run(input, batch, kv_, begin, end,
                        [&](const at::Tensor& x, StepContext& ctx) { return run_modules(x, ctx, begin, end); });
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

at::Tensor Model::run_modules(at::Tensor x, StepContext& ctx, int64_t begin, int64_t end) {
  bool ran = false;
  auto advise = [&](size_t i, bool need) {
    if (!disk_ || i >= loaded_.size() || !on_disk_[i]) return;
    for (const auto& t : desc_.modules[loaded_[i]].tensors) need ? disk_->will_need(t) : disk_->dont_need(t);
  };
  for (size_t i = 0; i < loaded_.size(); ++i) {
    if (loaded_[i] < begin || loaded_[i] >= end) continue;
    if (!ran) advise(i, true);
    advise(i + 1, true);  // read the next disk-tier module while this one computes
    const ModuleSpec& spec = desc_.modules[loaded_[i]];
    if (spec.kind == ModuleKind::kEmbedding) {
      TORCH_CHECK(x.scalar_type() == at::kLong && x.dim() == 1, "the embedding takes token ids [tokens] int64");
    }
    const int64_t k = stream_ordinal_[i];
    if (k >= 0) stream_->acquire(k);  // its weights are in its GPU slot for these kernels
    x = modules_[i]->forward(x, ctx);
    if (k >= 0) stream_->release(k);
    advise(i, false);
    ran = true;
  }
  TORCH_CHECK(ran, "no loaded module lies in [", begin, ", ", end, ")");
  return x;
}

}  // namespace cascade::stage
