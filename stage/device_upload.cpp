#include "stage/device_upload.h"

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime.h>

#include "comm/cuda_check.h"
#endif

namespace cascade::stage {

#ifdef CASCADE_WITH_CUDA
namespace {

void check(cudaError_t e, const char* what) { comm::cuda_check(e, std::string("weight upload: ") + what); }

class CudaUploader : public DeviceUploader {
 public:
  CudaUploader(at::Device device, size_t chunk) : device_(device), chunk_(chunk) {
    check(cudaSetDevice(device.index()), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    for (int i = 0; i < 2; ++i) {
      check(cudaHostAlloc(&buf_[i], chunk_, cudaHostAllocDefault), "cudaHostAlloc");
      check(cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  ~CudaUploader() override {
    if (fd_ >= 0) ::close(fd_);
    cudaStreamSynchronize(stream_);
    for (int i = 0; i < 2; ++i) {
      cudaEventDestroy(done_[i]);
      cudaFreeHost(buf_[i]);
    }
    cudaStreamDestroy(stream_);
  }

  at::Tensor upload(const at::Tensor& host) override {
    const at::Tensor src = host.contiguous();
    at::Tensor dst = alloc(src.sizes(), src.scalar_type());
    const char* from = static_cast<const char*>(src.data_ptr());
    stage(dst, [&](char* to, size_t at, size_t n) { std::memcpy(to, from + at, n); });
    return dst;
  }

  at::Tensor upload_file(const std::string& path, uint64_t offset, at::IntArrayRef shape,
                         at::ScalarType dtype) override {
    if (path != path_) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd_ < 0) throw std::runtime_error("weight upload: cannot open " + path + ": " + std::strerror(errno));
      path_ = path;
    }
    at::Tensor dst = alloc(shape, dtype);
    stage(dst, [&](char* to, size_t at, size_t n) {
      while (n > 0) {
        const ssize_t got = ::pread(fd_, to, n, static_cast<off_t>(offset + at));
        if (got <= 0) throw std::runtime_error("weight upload: short read of " + path_);
        to += got, at += static_cast<size_t>(got), n -= static_cast<size_t>(got);
      }
    });
    return dst;
  }

  void finish() override {
    const auto t0 = Clock::now();
    check(cudaStreamSynchronize(stream_), "finishing the weight upload");
    stats_.finish_s += seconds_since(t0);
  }

  Stats stats() const override { return stats_; }

 private:
  // Fills dst chunk by chunk: fill(to, at, n) writes bytes [at, at + n) of the source to
  // `to` (a pinned buffer), spread over threads; the DMA of one buffer overlaps the fill
  // of the other.
  template <class Fill>
  void stage(const at::Tensor& dst, const Fill& fill) {
    const size_t bytes = dst.numel() * dst.element_size();
    char* to = static_cast<char*>(dst.data_ptr());
    for (size_t off = 0; off < bytes; off += chunk_) {
      const size_t n = std::min(chunk_, bytes - off);
      const int b = next_;
      next_ ^= 1;
      auto t0 = Clock::now();
      check(cudaEventSynchronize(done_[b]), "waiting for a staging buffer");  // its previous DMA is done
      stats_.dma_wait_s += seconds_since(t0);
      char* buf = static_cast<char*>(buf_[b]);
      constexpr int64_t kGrain = int64_t{1} << 20;  // 1 MiB: a 13 MB tensor keeps 13 readers busy
      t0 = Clock::now();
      at::parallel_for(0, static_cast<int64_t>(n), kGrain, [&](int64_t lo, int64_t hi) {
        fill(buf + lo, off + static_cast<size_t>(lo), static_cast<size_t>(hi - lo));
      });
      stats_.read_s += seconds_since(t0);
      stats_.bytes += n;
      check(cudaMemcpyAsync(to + off, buf, n, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
      check(cudaEventRecord(done_[b], stream_), "cudaEventRecord");
    }
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
  cudaStream_t stream_ = nullptr;
  void* buf_[2] = {nullptr, nullptr};
  cudaEvent_t done_[2] = {nullptr, nullptr};
  int next_ = 0;
  int fd_ = -1;
  std::string path_;
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
