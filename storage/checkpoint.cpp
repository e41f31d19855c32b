#include "storage/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

namespace cascade::storage {
namespace {

namespace fs = std::filesystem;

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw StorageError(path.string() + ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw StorageError(path.string() + ": not valid JSON: " + e.what());
  }
}

}  // namespace

std::shared_ptr<Checkpoint> Checkpoint::open(const std::string& dir) {
  auto ck = std::shared_ptr<Checkpoint>(new Checkpoint());
  ck->dir_ = dir;
  const fs::path root(dir);
  if (!fs::is_directory(root)) throw StorageError(dir + ": not a directory (expected a Hugging Face checkpoint)");
  const fs::path cfg = root / "config.json";
  if (!fs::exists(cfg)) throw StorageError(dir + ": config.json is missing");
  ck->config_ = read_json(cfg);
  if (!ck->config_.is_object()) throw StorageError(cfg.string() + ": expected a JSON object");

  const fs::path single = root / "model.safetensors";
  const fs::path index = root / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const nlohmann::json idx = read_json(index);
    if (!idx.contains("weight_map") || !idx["weight_map"].is_object()) {
      throw StorageError(index.string() + ": has no \"weight_map\" object");
    }
    std::map<std::string, std::shared_ptr<SafetensorsFile>> files;
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw StorageError(index.string() + ": weight_map['" + it.key() + "'] is not a string");
      const std::string shard = it.value().get<std::string>();
      auto fit = files.find(shard);
      if (fit == files.end()) {
        const fs::path p = root / shard;
        if (!fs::exists(p)) {
          throw StorageError(index.string() + ": shard '" + shard + "' (holding tensor '" + it.key() +
                             "') is missing from " + dir);
        }
        fit = files.emplace(shard, SafetensorsFile::open(p.string())).first;
        ck->shards_.push_back(fit->second);
      }
      const TensorInfo* info = fit->second->find(it.key());
      if (!info) {
        throw StorageError(fit->second->path() + ": tensor '" + it.key() +
                           "' is listed in model.safetensors.index.json but missing from this shard");
      }
      ck->index_[it.key()] = Entry{fit->second, info};
    }
  } else if (fs::exists(single)) {
    auto f = SafetensorsFile::open(single.string());
    ck->shards_.push_back(f);
    for (const auto& [name, info] : f->tensors()) ck->index_[name] = Entry{f, &info};
  } else {
    std::string hint;
    if (fs::exists(root / "pytorch_model.bin") || fs::exists(root / "pytorch_model.bin.index.json")) {
      hint =
          " (found pytorch_model.bin: only safetensors checkpoints are supported; convert with "
          "transformers' save_pretrained)";
    }
    throw StorageError(dir + ": no model.safetensors or model.safetensors.index.json" + hint);
  }
  return ck;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) throw StorageError(dir_ + ": tensor '" + name + "' is not in the checkpoint");
  return *it->second.info;
}

const SafetensorsFile& Checkpoint::file_of(const std::string& name) const {
  info(name);
  return *index_.at(name).file;
}

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [n, e] : index_) names.push_back(n);
  std::sort(names.begin(), names.end());
  return names;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [n, e] : index_) total += e.info->nbytes();
  return total;
}

at::Tensor Checkpoint::view(const std::string& name) const {
  const TensorInfo& i = info(name);
  return index_.at(name).file->view(i);
}

at::Tensor Checkpoint::load(const std::string& name, at::ScalarType dtype) const {
  const TensorInfo& i = info(name);
  at::Tensor v = index_.at(name).file->view(i);
  bytes_read_ += i.nbytes();
  // .to() copies when converting; a same-dtype load must still own its memory.
  return v.scalar_type() == dtype ? v.clone(at::MemoryFormat::Contiguous) : v.to(dtype).contiguous();
}

std::vector<std::string> Checkpoint::files() const {
  std::vector<std::string> out;
  for (const auto& f : shards_) out.push_back(f->path());
  return out;
}

}  // namespace cascade::storage
