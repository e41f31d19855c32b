#include "stage/weights/device_upload.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime.h>

#include "comm/cuda_check.h"
#include "stage/weights/host_stager.h"
#endif

namespace cascade::stage {

ChunkPacker::ChunkPacker(uint64_t chunk_bytes) : chunk_(chunk_bytes) {
  if (chunk_ < kAlign) throw std::invalid_argument("staging chunk of " + std::to_string(chunk_) + " bytes < kAlign");
}

std::vector<std::vector<StagedPiece>> ChunkPacker::add(StagedPiece copy) {
  std::vector<std::vector<StagedPiece>> full;
  while (copy.bytes > 0) {
    const uint64_t n = std::min(copy.bytes, chunk_ - used_);
    StagedPiece piece = copy;
    piece.bytes = n;
    piece.at = used_;
    pieces_.push_back(std::move(piece));
    used_ = std::min(chunk_, (used_ + n + kAlign - 1) / kAlign * kAlign);
    if (copy.src) copy.src += n;
    copy.file_offset += n;
    copy.dst += n;
    copy.bytes -= n;
    if (used_ == chunk_) full.push_back(take());
  }
  return full;
}

std::vector<StagedPiece> ChunkPacker::take() {
  used_ = 0;
  return std::exchange(pieces_, {});
}

#ifdef CASCADE_WITH_CUDA
namespace {

void check(cudaError_t e, const char* what) { comm::cuda_check(e, std::string("weight upload: ") + what); }

class CudaUploader : public DeviceUploader {
 public:
  CudaUploader(at::Device device, size_t chunk)
      : device_(device),
        chunk_(chunk),
        packer_(chunk),
        readers_(std::make_unique<HostStager>(
            static_cast<int>(std::min(16u, std::max(1u, std::thread::hardware_concurrency()))))) {
    check(cudaSetDevice(device.index()), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    for (Slot& s : slots_) {
      check(cudaHostAlloc(&s.buf, chunk_, cudaHostAllocDefault), "cudaHostAlloc");
      check(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  ~CudaUploader() override {
    readers_.reset();  // joins the readers: nothing writes into the buffers after this
    cudaStreamSynchronize(stream_);
    for (Slot& s : slots_) {
      cudaEventDestroy(s.done);
      cudaFreeHost(s.buf);
    }
    cudaStreamDestroy(stream_);
  }

  at::Tensor upload(const at::Tensor& host) override {
    const at::Tensor src = host.contiguous();
    at::Tensor dst = alloc(src.sizes(), src.scalar_type());
    StagedPiece p;
    p.src = static_cast<const char*>(src.data_ptr());
    p.dst = static_cast<char*>(dst.data_ptr());
    p.bytes = dst.numel() * dst.element_size();
    add(std::move(p), src);
    return dst;
  }

  at::Tensor upload_file(const std::string& path, uint64_t offset, at::IntArrayRef shape,
                         at::ScalarType dtype) override {
    at::Tensor dst = alloc(shape, dtype);
    StagedPiece p;
    p.file = path;
    p.file_offset = offset;
    p.dst = static_cast<char*>(dst.data_ptr());
    p.bytes = dst.numel() * dst.element_size();
    add(std::move(p), at::Tensor());
    return dst;
  }

  void reserve(uint64_t bytes) override {
    if (bytes == 0) return;
    const auto t0 = Clock::now();
    (void)at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(device_));
    stats_.alloc_s += seconds_since(t0);
  }

  void finish() override {
    if (!packer_.empty()) submit(packer_.take(), std::exchange(keep_, {}));
    while (Slot* s = oldest_reading()) copy_out(s);
    const auto t0 = Clock::now();
    check(cudaStreamSynchronize(stream_), "finishing the weight upload");
    stats_.finish_s += seconds_since(t0);
    stats_.read_s = readers_->stats().busy_s;
  }

  Stats stats() const override { return stats_; }

 private:
  // A pinned buffer and what is in it: the pieces being read into it (`ticket`, 0 when
  // none) and the host tensors they are read from, kept alive until read.
  struct Slot {
    void* buf = nullptr;
    cudaEvent_t done = nullptr;  // its last DMA out finished
    uint64_t ticket = 0;
    std::vector<StagedPiece> pieces;
    std::vector<at::Tensor> keep;
  };

  // Packs one copy; `src`, if defined, is the host tensor it reads, kept alive until
  // every chunk that holds a piece of it has been read.
  void add(StagedPiece p, const at::Tensor& src) {
    stats_.bytes += p.bytes;
    std::vector<at::Tensor> keep = std::exchange(keep_, {});
    if (src.defined()) keep.push_back(src);
    for (auto& pieces : packer_.add(std::move(p))) {
      submit(std::move(pieces), std::move(keep));
      keep = src.defined() ? std::vector<at::Tensor>{src} : std::vector<at::Tensor>{};  // only it reaches further
    }
    if (!packer_.empty()) keep_ = std::move(keep);
  }

  // Hands a full chunk to the readers in the next slot, once that slot's earlier chunk
  // has been read and its DMA has finished. Chunks are copied out in the order read.
  void submit(std::vector<StagedPiece> pieces, std::vector<at::Tensor> keep) {
    Slot& s = slots_[next_];
    for (Slot* o = oldest_reading(); o && readers_->done(o->ticket); o = oldest_reading()) copy_out(o);
    while (s.ticket != 0) copy_out(oldest_reading());
    auto t0 = Clock::now();
    check(cudaEventSynchronize(s.done), "waiting for a staging buffer");
    stats_.dma_wait_s += seconds_since(t0);
    std::vector<HostStager::Copy> copies;
    copies.reserve(pieces.size());
    for (const StagedPiece& p : pieces)
      copies.push_back({p.src, static_cast<char*>(s.buf) + p.at, p.bytes, p.src ? "" : p.file, p.file_offset});
    try {
      s.ticket = readers_->submit(std::move(copies));
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("weight upload: ") + e.what());
    }
    s.pieces = std::move(pieces);
    s.keep = std::move(keep);
    next_ = (next_ + 1) % slots_.size();
  }

  // The slot whose chunk was handed to the readers longest ago and not yet copied out,
  // or null. Slots are filled round robin, so it is the first with a ticket from next_.
  Slot* oldest_reading() {
    for (size_t k = 0; k < slots_.size(); ++k) {
      Slot& s = slots_[(next_ + k) % slots_.size()];
      if (s.ticket != 0) return &s;
    }
    return nullptr;
  }

  // Waits until `s` is read, then queues its pieces' DMA.
  void copy_out(Slot* s) {
    try {
      readers_->wait(s->ticket);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("weight upload: ") + e.what());
    }
    for (const StagedPiece& p : s->pieces)
      check(cudaMemcpyAsync(p.dst, static_cast<char*>(s->buf) + p.at, p.bytes, cudaMemcpyHostToDevice, stream_),
            "cudaMemcpyAsync");
    check(cudaEventRecord(s->done, stream_), "cudaEventRecord");
    s->ticket = 0;
    s->pieces.clear();
    s->keep.clear();
  }

  using Clock = std::chrono::steady_clock;
  static double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
  at::Tensor alloc(at::IntArrayRef shape, at::ScalarType dtype) {
    const auto t0 = Clock::now();
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype).device(device_));
    stats_.alloc_s += seconds_since(t0);
    return t;
  }

  Stats stats_;
  at::Device device_;
  size_t chunk_;
  ChunkPacker packer_;
  std::vector<at::Tensor> keep_;  // sources of the chunk being filled
  // Threads of their own, not LibTorch's intra-op pool, which read at one thread's speed
  // (5.9 GB/s where 16 threads of pread reach 55 GB/s from the page cache).
  std::unique_ptr<HostStager> readers_;
  cudaStream_t stream_ = nullptr;
  std::array<Slot, 2> slots_;
  size_t next_ = 0;  // the slot the next chunk goes into
};

}  // namespace

std::unique_ptr<DeviceUploader> DeviceUploader::create(at::Device device, size_t chunk_bytes) {
  if (!device.is_cuda()) return nullptr;
  return std::make_unique<CudaUploader>(device, chunk_bytes);
}
#else
std::unique_ptr<DeviceUploader> DeviceUploader::create(at::Device, size_t) { return nullptr; }  // CPU-only build
#endif

}  // namespace cascade::stage
