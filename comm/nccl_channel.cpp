// Compiled only with CASCADE_WITH_CUDA (see comm/CMakeLists.txt).
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <thread>

#include "comm/channel.h"
#include "comm/cuda_check.h"

namespace cascade::comm {
namespace {

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ncclFloat32;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kLong:
      return ncclInt64;
    case at::kInt:
      return ncclInt32;
    case at::kByte:
      return ncclUint8;
    case at::kChar:
      return ncclInt8;
    case at::kDouble:
      return ncclFloat64;
    default:
      throw CommError(std::string("NCCL cannot send ") + c10::toString(t));
  }
}

class NcclEnd : public Channel {
 public:
  NcclEnd(const World& w, int peer, int tag, bool sender, at::Device device, Clock::time_point deadline)
      : world_(&w), peer_(peer), tag_(tag), device_index_(device.index()) {
    device_ = device;
    cuda_check(cudaSetDevice(device_index_), "cudaSetDevice");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    ncclUniqueId id;
    if (sender) {
      check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      world_->send_raw(peer_, tag_, &id, sizeof id, deadline, alive_);
    } else {
      world_->recv_raw(peer_, tag_, &id, sizeof id, deadline, alive_);
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // so initialisation can be polled against the deadline
    check(ncclCommInitRankConfig(&comm_, 2, id, sender ? 0 : 1, &config), "ncclCommInitRankConfig");
    poll(deadline, "ncclCommInitRankConfig", nullptr);
  }

  ~NcclEnd() override {
    if (comm_) aborted_ ? ncclCommAbort(comm_) : ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void send(StepHeader h, const at::Tensor& payload, Clock::time_point deadline) override {
    const at::Tensor t = payload.to(device_).contiguous();
    h.shape.assign(t.sizes().begin(), t.sizes().end());
    h.dtype = static_cast<uint8_t>(t.scalar_type());
    world_->send(peer_, tag_, encode(h), deadline, alive_);
    if (t.numel() == 0) return;
    cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // t was produced on PyTorch's stream
    check(
        ncclSend(t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.scalar_type()), 1 - rank(), comm_, stream_),
        "ncclSend");
    poll(deadline, "ncclSend", stream_);
  }

  Message recv(Clock::time_point deadline) override {
    const std::vector<uint8_t> head = world_->recv(peer_, tag_, deadline, alive_);
    Message m{decode_step(head.data(), head.size()), {}};
    const at::Tensor cpu = empty_payload(m.header, describe());
    m.payload = at::empty(cpu.sizes(), cpu.options().device(device_));
    if (m.payload.numel() == 0) return m;
    check(ncclRecv(m.payload.data_ptr(), static_cast<size_t>(m.payload.numel()), nccl_type(m.payload.scalar_type()),
                   1 - rank(), comm_, stream_),
          "ncclRecv");
    poll(deadline, "ncclRecv", stream_);
    return m;
  }

  std::string describe() const override {
    return "nccl to rank " + std::to_string(peer_) + " (cuda:" + std::to_string(device_index_) + ")";
  }

 private:
  int rank() const {
    int r = 0;
    ncclCommUserRank(comm_, &r);
    return r;
  }

  void check(ncclResult_t rc, const char* what) {
    if (rc != ncclSuccess && rc != ncclInProgress) {
      aborted_ = true;
      throw CommError(describe() + ": " + what + ": " + ncclGetErrorString(rc));
    }
  }

  // Waits for the communicator (and the stream, when given) to finish, watching the
  // deadline, the peer's liveness and NCCL's asynchronous errors.
  void poll(Clock::time_point deadline, const char* what, cudaStream_t stream) {
    for (int round = 0;; ++round) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) check(async, what);
      const bool comm_done = async == ncclSuccess;
      const cudaError_t q = stream ? cudaStreamQuery(stream) : cudaSuccess;
      if (q != cudaSuccess && q != cudaErrorNotReady) cuda_check(q, what);
      if (comm_done && q == cudaSuccess) return;
      if (round % 64 == 0) {
        try {
          if (alive_) alive_();
          if (Clock::now() > deadline) throw CommError(describe() + ": timed out in " + what);
        } catch (...) {
          aborted_ = true;
          throw;
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(std::min(200, round)));
    }
  }

  const World* world_;
  int peer_, tag_, device_index_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool aborted_ = false;
};

}  // namespace

std::unique_ptr<Channel> nccl_channel(const World& world, int peer, int tag, bool sender, at::Device device,
                                      Clock::time_point deadline) {
  return std::make_unique<NcclEnd>(world, peer, tag, sender, device, deadline);
}

}  // namespace cascade::comm
