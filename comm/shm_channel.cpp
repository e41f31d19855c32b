#include "comm/shm_channel.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "comm/world.h"

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace cascade::comm {

// Lives at the start of the segment. head/tail count bytes ever written/read; each is
// written by one side only (release) and read by the other (acquire).
struct ShmChannel::Control {
  uint32_t magic;
  uint16_t version;
  std::atomic<uint32_t> ready;  // set last by the creator
  uint64_t capacity;
  alignas(64) std::atomic<uint64_t> head;
  alignas(64) std::atomic<uint64_t> tail;
};

namespace {

constexpr size_t kHeaderBytes = 256;  // Control, padded; the ring follows
static_assert(sizeof(std::atomic<uint64_t>) == 8 && std::atomic<uint64_t>::is_always_lock_free,
              "the ring's counters must be address-free lock-free atomics");

std::string slash(const std::string& n) { return n.empty() || n[0] != '/' ? "/" + n : n; }

}  // namespace

std::unique_ptr<ShmChannel> ShmChannel::create(const std::string& name, size_t ring_bytes) {
  std::unique_ptr<ShmChannel> c(new ShmChannel());
  c->name_ = slash(name);
  c->owner_ = true;
  const int fd = ::shm_open(c->name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) throw CommError("shm_open(" + c->name_ + "): " + std::strerror(errno));
  c->map_bytes_ = kHeaderBytes + ring_bytes;
  if (::ftruncate(fd, static_cast<off_t>(c->map_bytes_)) != 0) {
    const int err = errno;
    ::close(fd);
    ::shm_unlink(c->name_.c_str());
    throw CommError("sizing shared memory " + c->name_ + ": " + std::strerror(err));
  }
  void* p = ::mmap(nullptr, c->map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) {
    ::shm_unlink(c->name_.c_str());
    throw CommError("mmap " + c->name_ + ": " + std::strerror(errno));
  }
  c->ctl_ = new (p) Control();
  c->ctl_->magic = kWireMagic;
  c->ctl_->version = kWireVersion;
  c->ctl_->capacity = ring_bytes;
  c->ctl_->head.store(0);
  c->ctl_->tail.store(0);
  c->ring_ = static_cast<uint8_t*>(p) + kHeaderBytes;
  c->cap_ = ring_bytes;
  c->ctl_->ready.store(1, std::memory_order_release);
  return c;
}

std::unique_ptr<ShmChannel> ShmChannel::open(const std::string& name, Clock::time_point deadline) {
  std::unique_ptr<ShmChannel> c(new ShmChannel());
  c->name_ = slash(name);
  int fd = -1;
  while ((fd = ::shm_open(c->name_.c_str(), O_RDWR, 0)) < 0) {
    if (errno != ENOENT) throw CommError("shm_open(" + c->name_ + "): " + std::strerror(errno));
    if (Clock::now() > deadline) throw CommError("timed out waiting for shared memory " + c->name_ + " to appear");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // The creator may not have sized it yet.
  off_t size = 0;
  while ((size = ::lseek(fd, 0, SEEK_END)) < static_cast<off_t>(kHeaderBytes)) {
    if (Clock::now() > deadline) {
      ::close(fd);
      throw CommError("timed out waiting for " + c->name_ + " to be sized");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  c->map_bytes_ = static_cast<size_t>(size);
  void* p = ::mmap(nullptr, c->map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw CommError("mmap " + c->name_ + ": " + std::strerror(errno));
  c->ctl_ = static_cast<Control*>(p);
  c->ring_ = static_cast<uint8_t*>(p) + kHeaderBytes;
  while (c->ctl_->ready.load(std::memory_order_acquire) != 1) {
    if (Clock::now() > deadline) throw CommError("timed out waiting for " + c->name_ + " to be initialised");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (c->ctl_->magic != kWireMagic || c->ctl_->version != kWireVersion) {
    throw CommError(c->name_ + ": channel version " + std::to_string(c->ctl_->version) + ", this build speaks " +
                    std::to_string(kWireVersion));
  }
  c->cap_ = c->ctl_->capacity;
  if (kHeaderBytes + c->cap_ > c->map_bytes_) throw CommError(c->name_ + ": ring larger than the segment");
  return c;
}

ShmChannel::~ShmChannel() {
#ifdef CASCADE_WITH_CUDA
  if (pinned_) cudaHostUnregister(ctl_);
#endif
  if (ctl_) ::munmap(ctl_, map_bytes_);
  if (owner_) ::shm_unlink(name_.c_str());
}

void ShmChannel::set_liveness(std::function<bool()> alive, std::string peer_name) {
  alive_ = std::move(alive);
  peer_ = std::move(peer_name);
}

// Polls (poll_pause), checking the peer's liveness and the deadline every 64 rounds.
void ShmChannel::wait_step(Clock::time_point deadline, const char* what, int* spins, Clock::time_point since) {
  if (++*spins % 64 == 0) {
    if (alive_ && !alive_()) throw CommError(peer_ + " is gone (while " + what + " on " + name_ + ")");
    if (Clock::now() > deadline)
      throw CommError("timed out " + std::string(what) + " on " + name_ + " (" + peer_ + ")");
  }
  poll_pause(since);
}

void ShmChannel::write_bytes(size_t n, const CopyFn& copy, Clock::time_point deadline) {
  int spins = 0;
  const auto since = Clock::now();
  size_t done = 0;
  while (done < n) {
    const uint64_t head = ctl_->head.load(std::memory_order_relaxed);
    const uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
    const size_t free = cap_ - static_cast<size_t>(head - tail);
    if (free == 0) {
      wait_step(deadline, "waiting to send", &spins, since);
      continue;
    }
    spins = 0;
    const size_t at = static_cast<size_t>(head % cap_);
    const size_t chunk = std::min({n - done, free, cap_ - at});
    copy(ring_ + at, done, chunk);
    ctl_->head.store(head + chunk, std::memory_order_release);
    done += chunk;
  }
}

void ShmChannel::read_bytes(size_t n, const CopyFn& copy, Clock::time_point deadline) {
  int spins = 0;
  const auto since = Clock::now();
  size_t done = 0;
  while (done < n) {
    const uint64_t tail = ctl_->tail.load(std::memory_order_relaxed);
    const uint64_t head = ctl_->head.load(std::memory_order_acquire);
    const size_t avail = static_cast<size_t>(head - tail);
    if (avail == 0) {
      wait_step(deadline, "waiting to receive", &spins, since);
      continue;
    }
    spins = 0;
    const size_t at = static_cast<size_t>(tail % cap_);
    const size_t chunk = std::min({n - done, avail, cap_ - at});
    copy(ring_ + at, done, chunk);
    ctl_->tail.store(tail + chunk, std::memory_order_release);
    done += chunk;
  }
}

namespace {
ShmChannel::CopyFn from(const void* src) {
  return [p = static_cast<const uint8_t*>(src)](uint8_t* ring, size_t off, size_t len) {
    std::memcpy(ring, p + off, len);
  };
}
ShmChannel::CopyFn to(void* dst) {
  return [p = static_cast<uint8_t*>(dst)](uint8_t* ring, size_t off, size_t len) { std::memcpy(p + off, ring, len); };
}
}  // namespace

void ShmChannel::send(const void* data, size_t n, Clock::time_point deadline) { send_with(n, from(data), deadline); }

void ShmChannel::send_with(size_t n, const CopyFn& from_source, Clock::time_point deadline) {
  const uint64_t len = n;
  write_bytes(sizeof len, from(&len), deadline);
  write_bytes(n, from_source, deadline);
}

bool ShmChannel::readable() const {
  return ctl_->head.load(std::memory_order_acquire) != ctl_->tail.load(std::memory_order_relaxed);
}

std::vector<uint8_t> ShmChannel::recv(Clock::time_point deadline) {
  uint64_t len = 0;
  read_bytes(sizeof len, to(&len), deadline);
  if (len > (1ull << 40)) throw CommError(name_ + ": message length " + std::to_string(len) + " is corrupt");
  std::vector<uint8_t> out(len);
  read_bytes(len, to(out.data()), deadline);
  return out;
}

void ShmChannel::recv_exact(void* dst, size_t n, Clock::time_point deadline) { recv_with(n, to(dst), deadline); }

void ShmChannel::recv_with(size_t n, const CopyFn& to_dest, Clock::time_point deadline) {
  uint64_t len = 0;
  read_bytes(sizeof len, to(&len), deadline);
  if (len != n) {
    throw CommError(name_ + ": expected a message of " + std::to_string(n) + " bytes, got " + std::to_string(len));
  }
  read_bytes(n, to_dest, deadline);
}

bool ShmChannel::pin_for_cuda() {
#ifdef CASCADE_WITH_CUDA
  if (pinned_) return true;
  const cudaError_t rc = cudaHostRegister(ctl_, map_bytes_, cudaHostRegisterDefault);
  if (rc != cudaSuccess) throw CommError("cudaHostRegister(" + name_ + "): " + cudaGetErrorString(rc));
  pinned_ = true;
  return true;
#else
  return false;
#endif
}

}  // namespace cascade::comm
