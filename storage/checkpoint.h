// A Hugging Face checkpoint directory used as-is: config.json plus either
// model.safetensors or model.safetensors.index.json with its shards.
//
// open() reads config.json and every safetensors header (no tensor data) and checks
// that the index and the shards agree. Tensor data is read only through view()/load().
// Ownership: a Checkpoint owns its open shard mappings; views keep their shard alive.
// Thread-safety: const methods may be called from any thread; the byte counter is atomic.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "storage/safetensors.h"

namespace cascade::storage {

class Checkpoint {
 public:
  static std::shared_ptr<Checkpoint> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }  // config.json as parsed

  bool has(const std::string& name) const { return index_.count(name) > 0; }
  // Throws StorageError naming the tensor and the checkpoint when absent.
  const TensorInfo& info(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  std::vector<std::string> tensor_names() const;  // sorted
  uint64_t total_bytes() const;                   // sum of all tensors' stored bytes
  std::vector<std::string> files() const;         // the safetensors files, in index order

  // Zero-copy CPU view of the stored bytes, in the stored dtype.
  at::Tensor view(const std::string& name) const;
  // An owned, contiguous CPU copy converted to `dtype`. Counts the bytes read.
  at::Tensor load(const std::string& name, at::ScalarType dtype) const;
  // Bytes read through load() so far (stored bytes, before conversion).
  uint64_t bytes_read() const { return bytes_read_.load(); }

 private:
  struct Entry {
    std::shared_ptr<SafetensorsFile> file;
    const TensorInfo* info;
  };
  std::string dir_;
  nlohmann::json config_;
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
  std::unordered_map<std::string, Entry> index_;
  mutable std::atomic<uint64_t> bytes_read_{0};
};

}  // namespace cascade::storage
