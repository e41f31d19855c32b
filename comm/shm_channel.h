// One direction of the shared-memory transport (DESIGN §6) between two processes on one
// host: a POSIX shm segment holding a single-producer single-consumer byte ring.
// Messages of any size (1 byte to many times the ring) stream through it, each behind an
// 8-byte length.
//
// No wait is unbounded: send() and recv() take a deadline, and while they wait they poll
// a liveness check (e.g. "has the peer process exited"), so a dead or stalled peer
// becomes a CommError naming what was awaited, never a hang.
//
// Ownership: the creator sizes and finally unlinks the segment; the opener maps it by
// name. Thread-safety: one sending thread on one end, one receiving thread on the other.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/message.h"

namespace cascade::comm {

using Clock = std::chrono::steady_clock;

class ShmChannel {
 public:
  // Creates "/<name>" (mode 0600) with a ring of `ring_bytes`; fails if it exists.
  static std::unique_ptr<ShmChannel> create(const std::string& name, size_t ring_bytes);
  // Opens a channel another process created, waiting for it until `deadline`.
  static std::unique_ptr<ShmChannel> open(const std::string& name, Clock::time_point deadline);
  ~ShmChannel();
  ShmChannel(const ShmChannel&) = delete;
  ShmChannel& operator=(const ShmChannel&) = delete;

  // Returns false when the peer is gone (or throws a CommError of its own); polled
  // while waiting.
  void set_liveness(std::function<bool()> alive, std::string peer_name);

  void send(const void* data, size_t n, Clock::time_point deadline);
  // Copies a message's bytes between the ring and somewhere else, a piece at a time:
  // (ring address, offset into the message, length). Lets a CUDA payload move by DMA
  // straight between device memory and the (registered) ring.
  using CopyFn = std::function<void(uint8_t* ring, size_t offset, size_t len)>;
  void send_with(size_t n, const CopyFn& from_source, Clock::time_point deadline);
  void recv_with(size_t n, const CopyFn& to_dest, Clock::time_point deadline);  // length must be n
  // Registers the whole segment with CUDA (cudaHostRegister) so device copies to and
  // from it run at pinned-memory speed. False in a build without CUDA.
  bool pin_for_cuda();
  std::vector<uint8_t> recv(Clock::time_point deadline);
  // Receives a message that must be exactly `n` bytes straight into `dst` (no copy
  // through a vector); throws CommError when the length differs.
  void recv_exact(void* dst, size_t n, Clock::time_point deadline);

  // True when bytes the sender wrote are waiting to be read.
  bool readable() const;
  const std::string& name() const { return name_; }

 private:
  struct Control;
  ShmChannel() = default;
  void write_bytes(size_t n, const CopyFn& copy, Clock::time_point deadline);
  void read_bytes(size_t n, const CopyFn& copy, Clock::time_point deadline);
  void wait_step(Clock::time_point deadline, const char* what, int* spins, Clock::time_point since);

  std::string name_;
  bool owner_ = false;
  size_t map_bytes_ = 0;
  Control* ctl_ = nullptr;
  uint8_t* ring_ = nullptr;
  size_t cap_ = 0;
  std::function<bool()> alive_;
  std::string peer_ = "the peer";
  bool pinned_ = false;
};

}  // namespace cascade::comm
