// The disk tier (DESIGN §3, §5): weights that live on disk and are paged in as they
// are used, never held whole in RAM.
//
// A tensor stored in the compute dtype is served straight from the checkpoint's own
// shard through mmap (zero copy). Any other tensor is converted once into
// `offload_folder` (one safetensors file plus manifest.json) and served from there.
// The manifest records the checkpoint's fingerprint (its files' names, sizes and
// mtimes), the dtype and the tensors; a folder whose manifest does not match, or whose
// file is missing, truncated or corrupt, is rebuilt, with the reason logged.
//
// LLM.int8 on the disk tier: the tensors named in `int8` are stored in the folder as
// int8 rows (the tensor's name) plus float32 per-row scales ("<name>:scale"), made by
// the caller's `quantize` (storage knows no quantization rule); the manifest lists them,
// so a change of quantization rebuilds the folder.
//
// will_need() reads a tensor's pages ahead in the background; dont_need() drops them
// from this process after use. Ownership: a DiskTier keeps its files mapped while
// views are alive. Thread-safety: const methods may run on any thread.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "storage/checkpoint.h"

namespace cascade::storage {

class DiskTier {
 public:
  // `names`: the checkpoint tensors on the disk tier. Converts what needs converting
  // (progress and the reuse/rebuild decision go to `log`). Throws StorageError.
  // (name, float32 weight) -> (int8 rows [out, in], float32 scales [out]).
  using Quantize = std::function<std::pair<at::Tensor, at::Tensor>(const std::string&, const at::Tensor&)>;
  static std::unique_ptr<DiskTier> open(std::shared_ptr<const Checkpoint> ck, const std::vector<std::string>& names,
                                        at::ScalarType dtype, const std::string& folder, std::ostream& log,
                                        const std::vector<std::string>& int8 = {}, const Quantize& quantize = {});

  bool has(const std::string& name) const { return where_.count(name) > 0; }
  // A read-only CPU view in the compute dtype (int8 tensors: int8, and "<name>:scale").
  at::Tensor get(const std::string& name) const;
  // Where get(name)'s bytes lie in a file, for readers that pread() rather than fault
  // pages into a mapping.
  struct FileRange {
    std::string path;
    uint64_t offset;
  };
  FileRange file_range(const std::string& name) const;
  void will_need(const std::string& name) const;
  void dont_need(const std::string& name) const;

  uint64_t zero_copy_bytes() const { return zero_copy_bytes_; }  // served from the shards
  uint64_t folder_bytes() const { return folder_bytes_; }        // served from offload_folder
  bool rebuilt() const { return rebuilt_; }                      // the folder was (re)written now

 private:
  struct Where {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  DiskTier() = default;
  std::shared_ptr<const Checkpoint> ck_;
  std::shared_ptr<SafetensorsFile> converted_;
  std::map<std::string, Where> where_;
  uint64_t zero_copy_bytes_ = 0, folder_bytes_ = 0;
  bool rebuilt_ = false;
};

// The checkpoint's identity for the offload manifest: files, sizes, mtimes, dtype.
nlohmann::json fingerprint(const Checkpoint& ck, at::ScalarType dtype);

}  // namespace cascade::storage
