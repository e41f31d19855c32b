#include "comm/channel.h"

#include "comm/cuda_check.h"
#include "comm/shm_channel.h"

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace cascade::comm {
namespace {

constexpr uint64_t kMaxPayload = uint64_t{1} << 36;  // 64 GiB: anything larger is a corrupt header

at::Tensor contiguous_cpu(const at::Tensor& t) {
  return t.device().is_cpu() ? t.contiguous() : t.to(at::kCPU).contiguous();
}

void describe_payload(StepHeader* h, const at::Tensor& t) {
  h->shape.assign(t.sizes().begin(), t.sizes().end());
  h->dtype = static_cast<uint8_t>(t.scalar_type());
}

size_t payload_bytes(const at::Tensor& t) { return static_cast<size_t>(t.numel()) * t.element_size(); }

#ifdef CASCADE_WITH_CUDA
void cuda_sync(at::Device d) {
  cuda_check(cudaSetDevice(d.index()), "cudaSetDevice");
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}
// Between device memory and the registered ring: a DMA, no staging copy.
void cuda_copy(void* dst, const void* src, size_t n, bool to_device) {
  cuda_check(cudaMemcpy(dst, src, n, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost),
             to_device ? "cudaMemcpy (shm ring -> GPU)" : "cudaMemcpy (GPU -> shm ring)");
}
#endif

class ShmEnd : public Channel {
 public:
  explicit ShmEnd(std::unique_ptr<ShmChannel> ring) : ring_(std::move(ring)) {
    ring_->set_liveness(
        [this] {
          if (alive_) alive_();  // throws a CommError naming the failed process
          return true;
        },
        "the peer");
  }

  void send(StepHeader h, const at::Tensor& payload, Clock::time_point deadline) override {
#ifdef CASCADE_WITH_CUDA
    if (payload.is_cuda()) {
      ring_->pin_for_cuda();
      const at::Tensor t = payload.contiguous();
      describe_payload(&h, t);
      const std::vector<uint8_t> head = encode(h);
      ring_->send(head.data(), head.size(), deadline);
      cuda_sync(t.device());  // the kernels that produced t ran on PyTorch's stream
      const auto* src = static_cast<const uint8_t*>(t.data_ptr());
      ring_->send_with(
          payload_bytes(t), [&](uint8_t* ring, size_t off, size_t len) { cuda_copy(ring, src + off, len, false); },
          deadline);
      return;
    }
#endif
    const at::Tensor t = contiguous_cpu(payload);
    describe_payload(&h, t);
    const std::vector<uint8_t> head = encode(h);
    ring_->send(head.data(), head.size(), deadline);
    ring_->send(t.data_ptr(), payload_bytes(t), deadline);
  }

  Message recv(Clock::time_point deadline) override {
    const std::vector<uint8_t> head = ring_->recv(deadline);
    Message m{decode_step(head.data(), head.size()), {}};
    m.payload = empty_payload(m.header, describe());
#ifdef CASCADE_WITH_CUDA
    if (device_.is_cuda()) {
      m.payload = at::empty(m.payload.sizes(), m.payload.options().device(device_));
      auto* dst = static_cast<uint8_t*>(m.payload.data_ptr());
      ring_->recv_with(
          payload_bytes(m.payload),
          [&](uint8_t* ring, size_t off, size_t len) { cuda_copy(dst + off, ring, len, true); }, deadline);
      return m;
    }
#endif
    ring_->recv_exact(m.payload.data_ptr(), payload_bytes(m.payload), deadline);
    return m.payload.device() == device_ ? m : Message{m.header, m.payload.to(device_)};
  }

  bool has_message() const override { return ring_->readable(); }

  void set_device(at::Device d) override {
    Channel::set_device(d);
    if (d.is_cuda()) ring_->pin_for_cuda();
  }

  std::string describe() const override { return "shm " + ring_->name(); }

 private:
  std::unique_ptr<ShmChannel> ring_;
};

class MpiEnd : public Channel {
 public:
  MpiEnd(const World& w, int peer, int tag) : world_(&w), peer_(peer), tag_(tag) {}

  void send(StepHeader h, const at::Tensor& payload, Clock::time_point deadline) override {
    const at::Tensor t = contiguous_cpu(payload);
    describe_payload(&h, t);
    world_->send(peer_, tag_, encode(h), deadline, alive_);
    if (payload_bytes(t) > 0) world_->send_raw(peer_, tag_, t.data_ptr(), payload_bytes(t), deadline, alive_);
  }

  Message recv(Clock::time_point deadline) override {
    const std::vector<uint8_t> head = world_->recv(peer_, tag_, deadline, alive_);
    Message m{decode_step(head.data(), head.size()), {}};
    m.payload = empty_payload(m.header, describe());
    const size_t n = payload_bytes(m.payload);
    if (n > 0) world_->recv_raw(peer_, tag_, m.payload.data_ptr(), n, deadline, alive_);
    // From pageable memory, a copy that does not wait for the device's queue (the driver
    // stages the bytes before it returns).
    if (!device_.is_cpu()) m.payload = m.payload.to(device_, /*non_blocking=*/true);
    return m;
  }

  bool has_message() const override { return world_->probe(peer_, tag_); }

  std::string describe() const override { return "mpi rank " + std::to_string(peer_) + " tag " + std::to_string(tag_); }

 private:
  const World* world_;
  int peer_, tag_;
};

}  // namespace

at::Tensor empty_payload(const StepHeader& h, const std::string& where) {
  at::ScalarType st;
  switch (static_cast<at::ScalarType>(h.dtype)) {
    case at::kFloat:
    case at::kBFloat16:
    case at::kHalf:
    case at::kLong:
    case at::kInt:
    case at::kByte:
    case at::kChar:
    case at::kDouble:  // kLogprobs records
      st = static_cast<at::ScalarType>(h.dtype);
      break;
    default:
      throw CommError(where + ": step " + std::to_string(h.step_id) + " has payload dtype code " +
                      std::to_string(h.dtype) + ", which is not a tensor dtype Cascade sends");
  }
  uint64_t n = 1;
  for (int64_t d : h.shape) {
    if (d < 0 || (d > 0 && n > kMaxPayload / static_cast<uint64_t>(d)))
      throw CommError(where + ": step " + std::to_string(h.step_id) + " has an impossible payload shape");
    n *= static_cast<uint64_t>(d);
  }
  if (n * at::elementSize(st) > kMaxPayload)
    throw CommError(where + ": step " + std::to_string(h.step_id) + " payload is larger than 64 GiB");
  return at::empty(h.shape, at::TensorOptions().dtype(st));
}

std::unique_ptr<Channel> shm_receiver(const std::string& name, size_t ring_bytes) {
  return std::make_unique<ShmEnd>(ShmChannel::create(name, ring_bytes));
}

std::unique_ptr<Channel> shm_sender(const std::string& name, Clock::time_point deadline) {
  return std::make_unique<ShmEnd>(ShmChannel::open(name, deadline));
}

std::unique_ptr<Channel> mpi_channel(const World& world, int peer, int tag) {
  return std::make_unique<MpiEnd>(world, peer, tag);
}

}  // namespace cascade::comm
