// Copies weights from host memory (often a view of the mapped checkpoint) to a CUDA
// device through two pinned staging buffers: while one chunk's DMA runs, the next is
// copied into the other buffer by several threads (issue 8: mmap -> pinned -> device,
// overlapped, with no whole-model pageable copy).
//
// Ownership: owns its pinned buffers, events and copy stream. The tensors it returns
// are complete only after finish(). Thread-safety: none; one loader thread uses it.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <memory>
#include <string>

namespace cascade::stage {

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
  // Waits until every upload has landed.
  virtual void finish() = 0;
  // Where the time went, for the stage's ready line: reading into the pinned buffers,
  // waiting for a buffer's DMA, allocating device memory, and the final finish().
  struct Stats {
    uint64_t bytes = 0;
    double read_s = 0, dma_wait_s = 0, alloc_s = 0, finish_s = 0;
  };
  virtual Stats stats() const = 0;
};

}  // namespace cascade::stage
