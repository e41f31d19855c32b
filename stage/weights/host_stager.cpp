#include "stage/weights/host_stager.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace cascade::stage {

void HostStager::copy(const Chunk& c) {
  if (c.fd < 0) {
    std::memcpy(c.dst, c.src, c.bytes);
    return;
  }
  uint64_t done = 0;
  while (done < c.bytes) {
    const ssize_t n = ::pread(c.fd, c.dst + done, c.bytes - done, static_cast<off_t>(c.file_offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw std::runtime_error(*c.file + ": reading " + std::to_string(c.bytes) + " bytes at offset " +
                               std::to_string(c.file_offset) + ": " +
                               (n == 0 ? std::string("unexpected end of file") : std::strerror(errno)));
    }
    done += static_cast<uint64_t>(n);
  }
}

int HostStager::open_file(const std::string& path) {
  auto it = files_.find(path);
  if (it != files_.end()) return it->second;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(path + ": cannot open for reading: " + std::strerror(errno));
  files_.emplace(path, fd);
  return fd;
}

HostStager::HostStager(int threads, std::chrono::milliseconds wait_limit) : wait_limit_(wait_limit) {
  for (int i = 0; i < std::max(1, threads); ++i) workers_.emplace_back([this] { work(); });
}

HostStager::~HostStager() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
  for (const auto& f : files_) ::close(f.second);
}

uint64_t HostStager::submit(std::vector<Copy> copies, std::function<void()> before) {
  Job job;
  for (const Copy& c : copies) {
    const int fd = c.file.empty() ? -1 : open_file(c.file);
    const std::string* file = c.file.empty() ? nullptr : &files_.find(c.file)->first;
    for (uint64_t off = 0; off < c.bytes; off += kChunk) {
      job.chunks.push_back({c.src ? static_cast<const char*>(c.src) + off : nullptr, static_cast<char*>(c.dst) + off,
                            std::min(kChunk, c.bytes - off), fd, file, c.file_offset + off});
    }
    job.bytes += c.bytes;
  }
  job.before = std::move(before);
  std::lock_guard<std::mutex> lock(mu_);
  job.ticket = ++submitted_;
  jobs_.push_back(std::move(job));
  work_cv_.notify_all();
  return submitted_;
}

bool HostStager::done(uint64_t ticket) const {
  std::lock_guard<std::mutex> lock(mu_);
  return completed_ >= ticket;
}

void HostStager::wait(uint64_t ticket) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!done_cv_.wait_for(lock, wait_limit_, [&] { return completed_ >= ticket; })) {
    const auto job = std::find_if(jobs_.begin(), jobs_.end(), [&](const Job& j) { return j.ticket == ticket; });
    const std::string* file = job != jobs_.end() && !job->chunks.empty() ? job->chunks.front().file : nullptr;
    std::ostringstream what;
    what << "the staging readers did not finish job " << ticket << " ("
         << (file ? "reading " + *file : std::string("copying pageable memory")) << ") within "
         << wait_limit_.count() / 1000.0 << " s: is the disk or its filesystem stalled?";
    throw std::runtime_error(what.str());
  }
  auto it = failed_.find(ticket);
  if (it == failed_.end()) return;
  std::exception_ptr e = it->second;
  failed_.erase(it);
  std::rethrow_exception(e);
}

HostStager::Stats HostStager::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void HostStager::finish_front(std::exception_ptr error) {
  const Job& job = jobs_.front();
  if (error) {
    failed_[job.ticket] = error;
  } else if (job.state == Job::kRunning) {
    stats_.bytes += job.bytes;
    stats_.busy_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - job.started).count();
  }
  completed_ = jobs_.front().ticket;
  jobs_.pop_front();
  done_cv_.notify_all();
  work_cv_.notify_all();
}

void HostStager::work() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    // Work exists when the front job is new, or running with a chunk left to claim.
    work_cv_.wait(lock, [&] {
      return stop_ || (!jobs_.empty() &&
                       (jobs_.front().state == Job::kNew ||
                        (jobs_.front().state == Job::kRunning && jobs_.front().next < jobs_.front().chunks.size())));
    });
    if (stop_) return;
    Job& job = jobs_.front();
    if (job.state == Job::kNew) {
      job.state = Job::kPreparing;  // other workers wait until the destination may be written
      std::function<void()> before = job.before;
      lock.unlock();
      std::exception_ptr error;
      try {
        if (before) before();
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      Job& same = jobs_.front();  // only this worker can finish a preparing job
      if (error || same.chunks.empty()) {
        finish_front(error);
      } else {
        same.state = Job::kRunning;
        same.started = std::chrono::steady_clock::now();
        work_cv_.notify_all();
      }
      continue;
    }
    const Chunk c = job.chunks[job.next++];
    lock.unlock();
    std::exception_ptr error;
    try {
      copy(c);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    Job& same = jobs_.front();  // the front cannot finish while this chunk is unaccounted
    if (error && !same.error) same.error = error;
    if (++same.finished == same.chunks.size()) finish_front(same.error);
  }
}

}  // namespace cascade::stage
