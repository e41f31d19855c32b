// Copies weights from host memory (often a view of the mapped checkpoint) to a CUDA
// device through two pinned staging buffers: while one chunk's DMA runs, the next is
// read into the other buffer by several threads (issue 8: mmap -> pinned -> device,
// overlapped, with no whole-model pageable copy). Consecutive uploads share a chunk
// (ChunkPacker), so every reader has a piece to read even when the tensors are small,
// and the loader goes on to the next tensor while a chunk is read.
//
// Ownership: owns its pinned buffers, events and copy stream. The tensors it returns
// are complete only after finish(). Thread-safety: none; one loader thread uses it.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cascade::stage {

// One piece of an upload: `bytes` from memory at `src`, or (src null) from `file` at
// `file_offset`, to the device at `dst`, through the staging chunk at offset `at`.
struct StagedPiece {
  const char* src = nullptr;
  std::string file;
  uint64_t file_offset = 0;
  char* dst = nullptr;
  uint64_t bytes = 0;
  uint64_t at = 0;
};

// Packs copies, in order, into chunks of `chunk_bytes`: each piece starts at a multiple
// of kAlign inside its chunk, and a copy larger than the room left is split across
// chunks. Bookkeeping only (no device), so it is tested on the CPU. Not thread-safe.
class ChunkPacker {
 public:
  static constexpr uint64_t kAlign = 4096;
  explicit ChunkPacker(uint64_t chunk_bytes);
  // Appends `copy` (its `at` is ignored). Returns the chunks it filled, in order; the
  // pieces of each lie within [0, chunk_bytes) and do not overlap.
  std::vector<std::vector<StagedPiece>> add(StagedPiece copy);
  // The pieces of the chunk being filled (none if empty), leaving the packer empty.
  std::vector<StagedPiece> take();
  bool empty() const { return pieces_.empty(); }

 private:
  uint64_t chunk_, used_ = 0;
  std::vector<StagedPiece> pieces_;
};

class DeviceUploader {
 public:
  // nullptr when this build has no CUDA code or `device` is not a CUDA device.
  static std::unique_ptr<DeviceUploader> create(at::Device device, size_t chunk_bytes = size_t{64} << 20);
  virtual ~DeviceUploader() = default;
  // A device tensor with host's shape, dtype and bytes (host: CPU, any layout). The
  // copy may still be in flight when this returns; `host` may be released at once.
  virtual at::Tensor upload(const at::Tensor& host) = 0;
  // The same from a file's bytes [offset, offset + shape's bytes), read with pread()
  // straight into the pinned buffers: no page faults on a mapping, which cap a copy from
  // mapped memory at a few GB/s even from the page cache.
  virtual at::Tensor upload_file(const std::string& path, uint64_t offset, at::IntArrayRef shape,
                                 at::ScalarType dtype) = 0;
  // Takes `bytes` of device memory in one piece and hands it back to LibTorch's caching
  // allocator, which keeps it: the uploads to come are then carved out of it instead of
  // each costing a cudaMalloc (0.04-0.05 s over the anchor's 291 tensors on an H100).
  // Ask for no more than the uploads will take: what they leave stays reserved for
  // later allocations of this process.
  virtual void reserve(uint64_t bytes) = 0;
  // Waits until every upload has landed.
  virtual void finish() = 0;
  // Where the time went, for the stage's ready line: the readers' time reading into the
  // pinned buffers (while the loader goes on), waiting for a buffer's DMA, allocating
  // device memory, and the final finish().
  struct Stats {
    uint64_t bytes = 0;
    double read_s = 0, dma_wait_s = 0, alloc_s = 0, finish_s = 0;
  };
  virtual Stats stats() const = 0;
};

}  // namespace cascade::stage
