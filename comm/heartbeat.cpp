#include "comm/heartbeat.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

namespace cascade::comm {

struct Heartbeats::Row {
  std::atomic<int64_t> pid;
  std::atomic<int64_t> beat_ns;  // CLOCK_MONOTONIC
  char pad[48];
};

namespace {

struct Head {
  uint32_t magic;
  uint32_t ranks;
  char pad[56];
};
static_assert(sizeof(Head) == 64, "Head is one cache line");

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

std::string slash(const std::string& n) { return n.empty() || n[0] != '/' ? "/" + n : n; }

}  // namespace

bool process_running(pid_t pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno != EPERM) return false;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return false;
  const size_t paren = line.rfind(')');  // the command name may contain spaces
  if (paren == std::string::npos || paren + 2 >= line.size()) return true;
  const char state = line[paren + 2];
  return state != 'Z' && state != 'X';
}

std::unique_ptr<Heartbeats> Heartbeats::create(const std::string& name, int ranks) {
  std::unique_ptr<Heartbeats> h(new Heartbeats());
  h->name_ = slash(name);
  h->owner_ = true;
  const int fd = ::shm_open(h->name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) throw CommError("shm_open(" + h->name_ + "): " + std::strerror(errno));
  h->bytes_ = sizeof(Head) + sizeof(Row) * static_cast<size_t>(ranks);
  if (::ftruncate(fd, static_cast<off_t>(h->bytes_)) != 0) {
    ::close(fd);
    ::shm_unlink(h->name_.c_str());
    throw CommError("sizing " + h->name_ + ": " + std::strerror(errno));
  }
  h->map_ = ::mmap(nullptr, h->bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (h->map_ == MAP_FAILED) {
    h->map_ = nullptr;
    ::shm_unlink(h->name_.c_str());
    throw CommError("mmap " + h->name_ + ": " + std::strerror(errno));
  }
  auto* head = static_cast<Head*>(h->map_);
  head->ranks = static_cast<uint32_t>(ranks);
  const int64_t t = now_ns();  // a rank that never registers counts as stalled from now
  for (int r = 0; r < ranks; ++r) {
    Row* row = new (h->row(r)) Row();
    row->pid.store(0);
    row->beat_ns.store(t);
  }
  std::atomic_thread_fence(std::memory_order_release);
  head->magic = kWireMagic;
  return h;
}

std::unique_ptr<Heartbeats> Heartbeats::open(const std::string& name, Clock::time_point deadline) {
  std::unique_ptr<Heartbeats> h(new Heartbeats());
  h->name_ = slash(name);
  int fd = -1;
  while ((fd = ::shm_open(h->name_.c_str(), O_RDWR, 0)) < 0) {
    if (Clock::now() > deadline) throw CommError("no heartbeat table " + h->name_ + ": " + std::strerror(errno));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size < static_cast<off_t>(sizeof(Head))) {
    ::close(fd);
    throw CommError(h->name_ + " is too small to be a heartbeat table");
  }
  h->bytes_ = static_cast<size_t>(size);
  h->map_ = ::mmap(nullptr, h->bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (h->map_ == MAP_FAILED) {
    h->map_ = nullptr;
    throw CommError("mmap " + h->name_ + ": " + std::strerror(errno));
  }
  const auto* head = static_cast<const Head*>(h->map_);
  if (head->magic != kWireMagic || sizeof(Head) + sizeof(Row) * head->ranks > h->bytes_)
    throw CommError(h->name_ + " is not a heartbeat table of this version");
  return h;
}

Heartbeats::~Heartbeats() {
  stop_ = true;
  if (beater_.joinable()) beater_.join();
  if (map_) ::munmap(map_, bytes_);
  if (owner_) ::shm_unlink(name_.c_str());
}

int Heartbeats::ranks() const { return static_cast<int>(static_cast<const Head*>(map_)->ranks); }

Heartbeats::Row* Heartbeats::row(int rank) const {
  if (rank < 0 || rank >= ranks()) throw CommError("heartbeat rank " + std::to_string(rank) + " out of range");
  return reinterpret_cast<Row*>(static_cast<char*>(map_) + sizeof(Head)) + rank;
}

pid_t Heartbeats::pid(int rank) const { return static_cast<pid_t>(row(rank)->pid.load()); }

void Heartbeats::start(int rank) {
  Row* r = row(rank);
  r->beat_ns.store(now_ns());
  r->pid.store(::getpid());
  beater_ = std::thread([this, r] {
    while (!stop_) {
      r->beat_ns.store(now_ns(), std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

void Heartbeats::check(int rank, double timeout_s, const std::string& who, double startup_s) const {
  const Row* r = row(rank);
  const pid_t p = static_cast<pid_t>(r->pid.load());
  const std::string id = who + (p > 0 ? " (pid " + std::to_string(p) + ")" : "");
  if (p > 0 && !process_running(p)) throw CommError(id + " exited");
  const double age = static_cast<double>(now_ns() - r->beat_ns.load()) / 1e9;
  const double limit = p > 0 || startup_s < 0 ? timeout_s : startup_s;
  if (age > limit) {
    std::ostringstream m;
    m.precision(1);
    m << std::fixed << id << (p > 0 ? " is not responding" : " did not start") << ": no heartbeat for " << age << " s";
    throw CommError(m.str());
  }
}

}  // namespace cascade::comm
