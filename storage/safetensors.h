// A safetensors file mapped into memory: its header parsed and validated, its tensors
// available as zero-copy views into the mapping.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section; offsets are relative to its start.
//
// Ownership: SafetensorsFile owns the mapping. Views hold a shared_ptr to the file, so
// a view outlives the object that handed it out. Thread-safety: immutable after open();
// any number of threads may read views concurrently.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cascade::storage {

// Any problem with checkpoint files. The message names the file and, where there is
// one, the tensor.
class StorageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TensorInfo {
  std::string name;
  std::string dtype_name;  // as stored: "F32", "BF16", ...
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data section
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

// "F32" -> at::kFloat, ...; throws StorageError naming the dtype when unsupported.
at::ScalarType scalar_type_from_safetensors(const std::string& name);
// "float32" | "bfloat16" | "float16" (and "fp32", "bf16", "fp16") -> ScalarType; throws std::invalid_argument.
at::ScalarType parse_dtype(const std::string& name);
const char* dtype_name(at::ScalarType t);      // "float32", "bfloat16", ...
std::string shape_str(at::IntArrayRef shape);  // "[2, 64]", for messages

class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;

  // A CPU tensor viewing the mapped bytes (read-only memory: never write through it).
  // Copies only when the stored bytes are misaligned for the element type.
  at::Tensor view(const TensorInfo& info) const;
  const uint8_t* data(const TensorInfo& info) const { return base_ + data_start_ + info.begin; }
  uint64_t file_offset(const TensorInfo& info) const { return data_start_ + info.begin; }  // for pread()

  // Paging hints for the disk tier: kWillNeed starts reading the tensor's pages in the
  // background; kDontNeed drops them from this process (the page cache may keep them).
  enum class Advice { kWillNeed, kDontNeed };
  void advise(const TensorInfo& info, Advice a) const;

 private:
  SafetensorsFile() = default;
  void parse_header();

  std::string path_;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

// Writes `tensors` (CPU, any layout) as a safetensors file: to `path`.tmp first, then
// renamed, so a crash never leaves a half-written file under the final name. The
// header's "__metadata__" gets `metadata`. Throws StorageError naming the path.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The safetensors dtype name of a ScalarType ("F32", "BF16", ...).
const char* safetensors_dtype(at::ScalarType t);

}  // namespace cascade::storage
