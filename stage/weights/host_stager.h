// Copies pageable host memory — views of mapped files, i.e. disk-tier weights — into
// pinned staging buffers on worker threads, ahead of use, so that a streamed module's
// disk-tier weights are read while earlier modules compute and then cross PCIe from
// pinned memory at full speed (DESIGN §5, issue 8). Reading a mapping is memcpy plus
// page faults; several threads read the page cache (or the disk) several times faster
// than the driver's one-thread pageable copy.
//
// A job is a list of copies; the workers split it into 4 MiB chunks and share them.
// Jobs finish in the order they were submitted. A job's `before` runs on a worker
// before its first byte is written (the weight stream passes "wait until the last DMA
// out of this buffer finished").
//
// Ownership: the caller keeps sources and destinations alive until its job is done.
// Thread-safety: submit/done/wait from one thread (the stage's step loop); the workers
// are internal. The destructor drops queued jobs and joins the workers.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace cascade::stage {

class HostStager {
 public:
  // From memory at src, or, with a non-empty `file`, from that file at file_offset
  // (pread: no page faults, no mapping to populate). The stager opens each file once and
  // keeps it open; a read error names the file.
  struct Copy {
    const void* src;
    void* dst;
    uint64_t bytes;
    std::string file = "";
    uint64_t file_offset = 0;
  };
  static constexpr uint64_t kChunk = 4ull << 20;

  // wait() gives up after `wait_limit`: a read that long means a stalled disk or
  // filesystem, and the stage reports it rather than hang (the coordinator's step
  // timeout, 300 s by default, would otherwise be the first to notice).
  explicit HostStager(int threads, std::chrono::milliseconds wait_limit = std::chrono::minutes(2));
  ~HostStager();
  HostStager(const HostStager&) = delete;
  HostStager& operator=(const HostStager&) = delete;

  // Queues a job and returns its ticket (1, 2, ...). Throws std::runtime_error naming a
  // file it cannot open.
  uint64_t submit(std::vector<Copy> copies, std::function<void()> before = {});
  bool done(uint64_t ticket) const;
  // Blocks until job `ticket` is done; rethrows what its `before` or a read threw. Throws
  // std::runtime_error naming the job's first file if it is not done within wait_limit
  // (the job stays queued: a later wait may still see it finish).
  void wait(uint64_t ticket);
  // The jobs done so far without an error: their bytes, and the seconds from each one's
  // first chunk claimed to its last written, summed (its `before` not counted). Their
  // ratio is the rate the readers reach while the rest of the process runs.
  struct Stats {
    uint64_t bytes = 0;
    double busy_s = 0;
  };
  Stats stats() const;

 private:
  // A piece of a Copy the workers take whole; `file` points at a key of files_.
  struct Chunk {
    const char* src;
    char* dst;
    uint64_t bytes;
    int fd;
    const std::string* file;
    uint64_t file_offset;
  };
  struct Job {
    uint64_t ticket;
    std::vector<Chunk> chunks;
    std::function<void()> before;
    enum { kNew, kPreparing, kRunning } state = kNew;
    size_t next = 0, finished = 0;
    uint64_t bytes = 0;
    std::chrono::steady_clock::time_point started;  // when it became kRunning
    std::exception_ptr error;                       // the first read that failed
  };
  void work();
  static void copy(const Chunk& c);             // throws on a read error
  int open_file(const std::string& path);       // on the submitting thread
  void finish_front(std::exception_ptr error);  // with mu_ held

  mutable std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<Job> jobs_;
  uint64_t submitted_ = 0, completed_ = 0;
  std::map<uint64_t, std::exception_ptr> failed_;
  Stats stats_;
  bool stop_ = false;
  std::chrono::milliseconds wait_limit_;
  std::map<std::string, int> files_;  // opened by submit(), closed by the destructor
  std::vector<std::thread> workers_;
};

}  // namespace cascade::stage
