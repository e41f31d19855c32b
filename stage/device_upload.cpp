#include "stage/device_upload.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace cascade::stage {

#ifdef CASCADE_WITH_CUDA
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("weight upload: ") + what + ": " + cudaGetErrorString(e));
}

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
    cudaStreamSynchronize(stream_);
    for (int i = 0; i < 2; ++i) {
      cudaEventDestroy(done_[i]);
      cudaFreeHost(buf_[i]);
    }
    cudaStreamDestroy(stream_);
  }

  at::Tensor upload(const at::Tensor& host) override {
    const at::Tensor src = host.contiguous();
    at::Tensor dst = at::empty(src.sizes(), src.options().device(device_));
    const size_t bytes = src.numel() * src.element_size();
    const char* from = static_cast<const char*>(src.data_ptr());
    char* to = static_cast<char*>(dst.data_ptr());
    for (size_t off = 0; off < bytes; off += chunk_) {
      const size_t n = std::min(chunk_, bytes - off);
      const int b = next_;
      next_ ^= 1;
      check(cudaEventSynchronize(done_[b]), "waiting for a staging buffer");  // its previous DMA is done
      char* stage = static_cast<char*>(buf_[b]);
      // Page-cache reads and the copy into pinned memory are the slow part: spread them.
      constexpr int64_t kGrain = int64_t{1} << 20;
      at::parallel_for(0, static_cast<int64_t>(n), kGrain, [&](int64_t lo, int64_t hi) {
        std::memcpy(stage + lo, from + off + lo, static_cast<size_t>(hi - lo));
      });
      check(cudaMemcpyAsync(to + off, stage, n, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
      check(cudaEventRecord(done_[b], stream_), "cudaEventRecord");
    }
    return dst;
  }

  void finish() override { check(cudaStreamSynchronize(stream_), "finishing the weight upload"); }

 private:
  at::Device device_;
  size_t chunk_;
  cudaStream_t stream_ = nullptr;
  void* buf_[2] = {nullptr, nullptr};
  cudaEvent_t done_[2] = {nullptr, nullptr};
  int next_ = 0;
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
