// comm::Channel: one hop of a step's route (DESIGN §6). A message is a StepHeader plus
// one tensor payload (token ids [tokens], hidden states [tokens, hidden], sampled ids
// [seqs] or logits [seqs, vocab]). The planner picks the transport of each hop:
//   - shm:  a POSIX shared-memory ring on one host (ShmChannel);
//   - mpi:  MPI point-to-point, across hosts, on a tag of its own per hop;
//   - nccl: GPU to GPU (CASCADE_WITH_CUDA builds), header over MPI, payload by
//           ncclSend/ncclRecv on a stream of its own.
// Every hop is a FIFO and each step visits the hops in the same order on every
// process, so no send can wait on a send (no deadlock by construction).
//
// No wait is unbounded: send/recv take a deadline and poll the Liveness set with
// set_liveness(), which names the failed process.
//
// Ownership: a Channel owns its transport resources. Thread-safety: one sending thread
// and one receiving thread per channel end.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "comm/message.h"
#include "comm/world.h"

namespace cascade::comm {

struct Message {
  StepHeader header;
  at::Tensor payload;  // contiguous, on the channel's device; shape and dtype as in header
};

class Channel {
 public:
  virtual ~Channel() = default;
  // Sets header.shape and header.dtype from `payload` (any device; contiguous or not).
  virtual void send(StepHeader header, const at::Tensor& payload, Clock::time_point deadline) = 0;
  virtual Message recv(Clock::time_point deadline) = 0;
  // True when a message has arrived, so that recv() would not wait for one to start. An
  // end that cannot tell says false. Receiving side only.
  virtual bool has_message() const { return false; }
  virtual std::string describe() const = 0;  // "shm /cascade-123-h2", for messages
  void set_liveness(Liveness alive) { alive_ = std::move(alive); }
  // Where received payloads are put (default CPU). A shm end with a CUDA device pins
  // its ring (cudaHostRegister) and copies between the ring and the GPU directly.
  virtual void set_device(at::Device d) { device_ = d; }

 protected:
  Liveness alive_;
  at::Device device_ = at::kCPU;
};

// Shared memory: the receiving end creates the ring, the sending end opens it (waiting
// for it to appear until `deadline`).
std::unique_ptr<Channel> shm_receiver(const std::string& name, size_t ring_bytes);
std::unique_ptr<Channel> shm_sender(const std::string& name, Clock::time_point deadline);

// MPI: both ends name the peer rank and the hop's tag.
std::unique_ptr<Channel> mpi_channel(const World& world, int peer, int tag);

#ifdef CASCADE_WITH_CUDA
// NCCL between two GPUs: a communicator of two ranks per hop. The sender makes the
// unique id and sends it to the receiver over MPI (hop tag); the header travels over
// MPI, the payload by ncclSend/ncclRecv on a stream of its own. Initialisation and
// transfers are non-blocking and polled (ncclCommGetAsyncError), and a deadline or a
// dead peer aborts the communicator (ncclCommAbort) instead of hanging.
std::unique_ptr<Channel> nccl_channel(const World& world, int peer, int tag, bool sender, at::Device device,
                                      Clock::time_point deadline);
#endif

// The payload's bytes, checked against the header; throws CommError naming the hop.
at::Tensor empty_payload(const StepHeader& h, const std::string& where);

}  // namespace cascade::comm
