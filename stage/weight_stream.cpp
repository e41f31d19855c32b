#include "stage/weight_stream.h"

#include <stdexcept>
#include <string>
#include <vector>

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime.h>

#include "comm/cuda_check.h"
#endif

namespace cascade::stage {

#ifdef CASCADE_WITH_CUDA
namespace {

void check(cudaError_t e, const char* what) { comm::cuda_check(e, std::string("weight streaming: ") + what); }

// LibTorch computes on the device's default stream unless a guard says otherwise, and
// nothing does on a stage that streams (CUDA graphs are off there): the legacy stream.
constexpr cudaStream_t kCompute = nullptr;

class CudaWeightStream : public WeightStream {
 public:
  CudaWeightStream(at::Device device, uint64_t slot_bytes) : slot_bytes_(slot_bytes) {
    check(cudaSetDevice(device.index()), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking), "cudaStreamCreate");
    for (int s = 0; s < 2; ++s) {
      slot_[s] = at::empty({static_cast<int64_t>(slot_bytes)}, at::TensorOptions().dtype(at::kByte).device(device));
      check(cudaEventCreateWithFlags(&copied_[s], cudaEventDisableTiming), "cudaEventCreate");
      check(cudaEventCreateWithFlags(&freed_[s], cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  ~CudaWeightStream() override {
    cudaStreamSynchronize(copy_);
    for (int s = 0; s < 2; ++s) {
      cudaEventDestroy(copied_[s]);
      cudaEventDestroy(freed_[s]);
    }
    cudaStreamDestroy(copy_);
  }

  at::Tensor add(int64_t k, const at::Tensor& host) override {
    TORCH_CHECK(k >= 0 && k <= static_cast<int64_t>(modules_.size()), "streamed modules are added in order");
    if (k == static_cast<int64_t>(modules_.size())) modules_.emplace_back();
    Module& m = modules_[static_cast<size_t>(k)];
    const at::Tensor src = host.contiguous();
    const uint64_t n = static_cast<uint64_t>(src.numel()) * src.element_size();
    TORCH_CHECK(m.used + n <= slot_bytes_, "streamed module ", k, " needs more than its slot of ", slot_bytes_,
                " bytes");
    at::Tensor view = slot_[k % 2]
                          .narrow(0, static_cast<int64_t>(m.used), static_cast<int64_t>(n))
                          .view(src.scalar_type())
                          .view(src.sizes());
    m.pieces.push_back({src, static_cast<char*>(slot_[k % 2].data_ptr()) + m.used, n});
    m.used += (n + kAlign - 1) / kAlign * kAlign;
    host_bytes_ += n;
    return view;
  }

  void acquire(int64_t k) override {
    const int s = static_cast<int>(k % 2);
    if (loaded_[s] != k) issue(k);
    check(cudaStreamWaitEvent(kCompute, copied_[s], 0), "waiting for a streamed module");
    const int64_t next = (k + 1) % static_cast<int64_t>(modules_.size());
    if (next % 2 != s && loaded_[next % 2] != next) issue(next);  // its slot's last reader was module k - 1
  }

  void release(int64_t k) override { check(cudaEventRecord(freed_[k % 2], kCompute), "cudaEventRecord"); }

  uint64_t host_bytes() const override { return host_bytes_; }

 private:
  struct Piece {
    at::Tensor host;  // kept alive: the copy reads it every step
    void* dst;
    uint64_t bytes;
  };
  struct Module {
    std::vector<Piece> pieces;
    uint64_t used = 0;
  };

  void issue(int64_t k) {
    const int s = static_cast<int>(k % 2);
    check(cudaStreamWaitEvent(copy_, freed_[s], 0), "waiting for a free slot");  // the slot's last reader is done
    for (const Piece& p : modules_[static_cast<size_t>(k)].pieces)
      check(cudaMemcpyAsync(p.dst, p.host.data_ptr(), p.bytes, cudaMemcpyHostToDevice, copy_), "cudaMemcpyAsync");
    check(cudaEventRecord(copied_[s], copy_), "cudaEventRecord");
    loaded_[s] = k;
  }

  uint64_t slot_bytes_, host_bytes_ = 0;
  at::Tensor slot_[2];
  cudaStream_t copy_ = nullptr;
  cudaEvent_t copied_[2] = {nullptr, nullptr}, freed_[2] = {nullptr, nullptr};
  int64_t loaded_[2] = {-1, -1};
  std::vector<Module> modules_;
};

}  // namespace

std::unique_ptr<WeightStream> WeightStream::create(at::Device device, uint64_t slot_bytes) {
  if (!device.is_cuda()) return nullptr;
  return std::make_unique<CudaWeightStream>(device, slot_bytes);
}
#else
std::unique_ptr<WeightStream> WeightStream::create(at::Device, uint64_t) { return nullptr; }  // CPU-only build
#endif

}  // namespace cascade::stage
