// Liveness of the processes of one run on one host (DESIGN §6: "a stage that dies or
// stalls is detected"). A POSIX shm table holds one row per rank: its pid and the time
// of its last beat. Each process beats from a thread of its own, so a long step does
// not look like a stall, while a stopped, hung or dead process does.
//
// A row reads as dead when its pid is gone or a zombie, and as stalled when its beat is
// older than the timeout. CLOCK_MONOTONIC is system-wide on Linux, so beats compare
// across processes. Ranks on other hosts are not covered (their rows stay empty and
// are skipped): there the step deadline and MPI's own errors apply.
//
// Ownership: the coordinator creates and finally unlinks the table; stages open it.
// Thread-safety: rows are atomics; check() may run on any thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "comm/world.h"

namespace cascade::comm {

class Heartbeats {
 public:
  static std::unique_ptr<Heartbeats> create(const std::string& name, int ranks);
  static std::unique_ptr<Heartbeats> open(const std::string& name, Clock::time_point deadline);
  ~Heartbeats();
  Heartbeats(const Heartbeats&) = delete;
  Heartbeats& operator=(const Heartbeats&) = delete;

  // Registers this process as `rank` and beats every 100 ms until destruction.
  void start(int rank);
  // Throws CommError "<who> (pid P) exited" / "<who> (pid P) is not responding: no
  // heartbeat for 5.2 s" when rank is dead or stalled longer than timeout_s. A rank that
  // has not registered yet (still starting: exec, dynamic loading, MPI init) gets
  // startup_s instead ("<who> did not start: ..."); negative = timeout_s.
  void check(int rank, double timeout_s, const std::string& who, double startup_s = -1) const;
  pid_t pid(int rank) const;
  int ranks() const;
  const std::string& name() const { return name_; }

 private:
  struct Row;
  Heartbeats() = default;
  Row* row(int rank) const;

  std::string name_;
  bool owner_ = false;
  void* map_ = nullptr;
  size_t bytes_ = 0;
  std::atomic<bool> stop_{false};
  std::thread beater_;
};

// True when `pid` exists on this host and is not a zombie. (A stopped process is
// running as far as this goes; its beats stop, which check() reports.)
bool process_running(pid_t pid);

}  // namespace cascade::comm
