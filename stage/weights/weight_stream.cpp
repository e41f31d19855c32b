#include "stage/weights/weight_stream.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "config/env.h"

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime.h>

#include "comm/cuda_check.h"
#include "stage/weights/host_stager.h"
#endif

namespace cascade::stage {

namespace {

// The count the environment variable `name` gives, else `fallback`, within [lo, hi].
int env_count(const char* name, long fallback, long lo, long hi) {
  return static_cast<int>(std::clamp(config::env_int(name).value_or(fallback), lo, hi));
}

}  // namespace

int WeightStream::staging_buffers() { return env_count("CASCADE_STAGING_BUFFERS", 4, 2, 8); }

int WeightStream::reader_threads() {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return env_count("CASCADE_STREAM_READERS", std::clamp(cores - 1, 1u, 16u), 1, 64);
}

#ifdef CASCADE_WITH_CUDA
namespace {

void check(cudaError_t e, const char* what) { comm::cuda_check(e, std::string("weight streaming: ") + what); }

// LibTorch computes on the device's default stream unless a guard says otherwise, and
// nothing does on a stage that streams (CUDA graphs are off there): the legacy stream.
constexpr cudaStream_t kCompute = nullptr;

class CudaWeightStream : public WeightStream {
 public:
  CudaWeightStream(at::Device device, uint64_t slot_bytes, int slots)
      : device_(device),
        slot_bytes_(slot_bytes),
        slots_(slots),
        slot_(static_cast<size_t>(slots_)),
        copied_(static_cast<size_t>(slots_), nullptr),
        freed_(static_cast<size_t>(slots_), nullptr),
        loaded_(static_cast<size_t>(slots_), -1) {
    check(cudaSetDevice(device.index()), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking), "cudaStreamCreate");
    for (size_t s = 0; s < slot_.size(); ++s) {
      slot_[s] = at::empty({static_cast<int64_t>(slot_bytes)}, at::TensorOptions().dtype(at::kByte).device(device));
      check(cudaEventCreateWithFlags(&copied_[s], cudaEventDisableTiming), "cudaEventCreate");
      check(cudaEventCreateWithFlags(&freed_[s], cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  ~CudaWeightStream() override {
    stager_.reset();  // joins the readers (a queued job may wait on an event below)
    cudaStreamSynchronize(copy_);
    for (size_t s = 0; s < slot_.size(); ++s) {
      if (copied_[s]) cudaEventDestroy(copied_[s]);
      if (freed_[s]) cudaEventDestroy(freed_[s]);
    }
    for (Staging& st : staging_)
      if (st.dma_done) cudaEventDestroy(st.dma_done);
    cudaStreamDestroy(copy_);
  }

  at::Tensor add(int64_t k, const at::Tensor& host, const std::string& file, uint64_t offset) override {
    TORCH_CHECK(k >= 0 && k <= static_cast<int64_t>(modules_.size()), "streamed modules are added in order");
    if (k == static_cast<int64_t>(modules_.size())) modules_.emplace_back();
    Module& m = modules_[static_cast<size_t>(k)];
    const at::Tensor src = host.contiguous();
    const uint64_t n = static_cast<uint64_t>(src.numel()) * src.element_size();
    TORCH_CHECK(m.used + n <= slot_bytes_, "streamed module ", k, " needs more than its slot of ", slot_bytes_,
                " bytes");
    at::Tensor view = slot_[slot_of(k)]
                          .narrow(0, static_cast<int64_t>(m.used), static_cast<int64_t>(n))
                          .view(src.scalar_type())
                          .view(src.sizes());
    // Files and pageable memory go through the readers and a pinned staging buffer, at
    // the same offset as in the slot.
    const bool staged = !file.empty() || !src.is_pinned();
    if (staged) start_staging();
    m.pieces.push_back(
        {src, static_cast<char*>(slot_[slot_of(k)].data_ptr()) + m.used, n, staged, m.used, file, offset});
    m.staged = m.staged || staged;
    m.used += (n + kAlign - 1) / kAlign * kAlign;
    host_bytes_ += n;
    return view;
  }

  void reserve(int64_t n) override {
    while (static_cast<int64_t>(modules_.size()) < n) modules_.emplace_back();
  }

  void acquire(int64_t k, bool prefetch_next) override {
    TORCH_CHECK(k >= 0 && k < static_cast<int64_t>(modules_.size()), "streamed module ", k, " of ", modules_.size(),
                " was never added");
    const size_t s = slot_of(k);
    if (loaded_[s] != k) issue(k, /*block=*/true);
    check(cudaStreamWaitEvent(kCompute, copied_[s], 0), "waiting for a streamed module");
    last_ = k;
    // The next modules' copies may start now (their slots' last readers came before
    // module k) unless a disk-tier part is still being read; then release(k) or
    // acquire(next) issues it, and the GPU computes module k meanwhile.
    if (prefetch_next) prefetch();
    // Reads the next modules' disk-tier pieces into the free staging buffers, one module
    // a buffer, so the first disk-tier modules are read while the pinned ones copy.
    const int64_t n = static_cast<int64_t>(modules_.size());
    for (size_t j = 1; j <= staging_.size(); ++j) stage((k + static_cast<int64_t>(j)) % n);
  }

  void release(int64_t k, bool prefetch_next) override {
    check(cudaEventRecord(freed_[slot_of(k)], kCompute), "cudaEventRecord");
    if (prefetch_next) prefetch();
  }

  // Copies the modules after last_ into their slots, in order (one copy stream), up to
  // slots - 1 ahead. It stops at a module whose slot one from last_ on still needs:
  // across the end of the order (a count that is not a multiple of the slots) two
  // neighbours can share a slot, and last_'s slot is not freed until release(last_).
  // A module its slot still holds (from the step before) needs no copy.
  void prefetch() override {
    if (last_ < 0) return;
    const int64_t n = static_cast<int64_t>(modules_.size());
    for (int64_t j = 1; j < slots_ && j < n; ++j) {
      const int64_t m = (last_ + j) % n;
      for (int64_t i = 0; i < j; ++i)
        if (slot_of((last_ + i) % n) == slot_of(m)) return;
      if (loaded_[slot_of(m)] != m && !issue(m, /*block=*/false)) return;
    }
  }

  uint64_t host_bytes() const override { return host_bytes_; }
  int slot_count() const override { return slots_; }

  ReadStats read_stats() const override {
    if (!stager_) return {};
    const HostStager::Stats st = stager_->stats();
    return {st.bytes, st.busy_s, waited_s_};
  }

 private:
  struct Piece {
    at::Tensor host;  // kept alive: the copy reads it every step
    void* dst;
    uint64_t bytes;
    bool staged;       // pageable: read into a staging buffer first
    uint64_t offset;   // in the slot and in the staging buffer
    std::string file;  // non-empty: read from this file at file_offset instead of `host`
    uint64_t file_offset;
  };
  struct Module {
    std::vector<Piece> pieces;
    uint64_t used = 0;
    bool staged = false;  // some piece is
  };
  // A pinned host buffer the readers fill with one module's pageable pieces.
  struct Staging {
    at::Tensor buffer;  // [slot_bytes] uint8, pinned
    int64_t module = -1;
    uint64_t ticket = 0;
    bool consumed = true;  // its DMA was issued: free to refill once dma_done
    cudaEvent_t dma_done = nullptr;
  };

  void start_staging() {
    if (stager_) return;
    staging_.resize(static_cast<size_t>(WeightStream::staging_buffers()));
    for (Staging& st : staging_) {
      st.buffer =
          at::empty({static_cast<int64_t>(slot_bytes_)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
      check(cudaEventCreateWithFlags(&st.dma_done, cudaEventDisableTiming), "cudaEventCreate");
    }
    stager_ = std::make_unique<HostStager>(WeightStream::reader_threads());
  }

  Staging* staging_of(int64_t k) {
    for (Staging& st : staging_)
      if (st.module == k && !st.consumed) return &st;
    return nullptr;
  }

  // Asks the readers for module k's pageable pieces, if it has any and a buffer is free.
  // Not while its slot holds it (or its copy is queued): staged then, it would be for the
  // next step, and would hold a buffer through this one. That left one buffer for the
  // disk tier, whose reads and copies then ran in series (docs/performance.md, session 32).
  void stage(int64_t k) {
    const Module& m = modules_[static_cast<size_t>(k)];
    if (!m.staged || staging_of(k) || loaded_[slot_of(k)] == k) return;
    Staging* free = nullptr;
    for (Staging& st : staging_)
      if (st.consumed && (!free || st.ticket < free->ticket)) free = &st;
    if (!free) return;  // all hold modules not yet copied to the GPU
    std::vector<HostStager::Copy> copies;
    for (const Piece& p : m.pieces)
      if (p.staged)
        copies.push_back({p.host.data_ptr(), static_cast<char*>(free->buffer.data_ptr()) + p.offset, p.bytes, p.file,
                          p.file_offset});
    const cudaEvent_t dma_done = free->dma_done;
    const int device = device_.index();
    free->module = k;
    free->consumed = false;
    free->ticket = stager_->submit(std::move(copies), [dma_done, device] {
      check(cudaSetDevice(device), "cudaSetDevice");
      check(cudaEventSynchronize(dma_done), "waiting for a staging buffer's last copy");
    });
  }

  void wait_for(uint64_t ticket) {  // HostStager::wait, timed: the step loop idle on the readers
    const auto t0 = std::chrono::steady_clock::now();
    stager_->wait(ticket);
    waited_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  size_t slot_of(int64_t k) const { return static_cast<size_t>(k % slots_); }

  // Queues module k's copy into its slot. A module with pageable pieces needs them read
  // first: block = false leaves it for later if they are not (returns false).
  bool issue(int64_t k, bool block) {
    const Module& m = modules_[static_cast<size_t>(k)];
    Staging* st = nullptr;
    if (m.staged) {
      stage(k);
      st = staging_of(k);
      if (!st) {  // all buffers hold modules read ahead for another order of use
        if (!block) return false;
        Staging& old = *std::min_element(staging_.begin(), staging_.end(),
                                         [](const Staging& a, const Staging& b) { return a.ticket < b.ticket; });
        wait_for(old.ticket);
        old.consumed = true;  // dropped unread: no copy left it, so its dma_done is still the last one
        stage(k);
        st = staging_of(k);
      }
      if (!block && !stager_->done(st->ticket)) return false;
      wait_for(st->ticket);
    }
    const size_t s = slot_of(k);
    check(cudaStreamWaitEvent(copy_, freed_[s], 0), "waiting for a free slot");  // the slot's last reader is done
    for (const Piece& p : m.pieces) {
      const void* from = p.staged ? static_cast<const char*>(st->buffer.data_ptr()) + p.offset : p.host.data_ptr();
      check(cudaMemcpyAsync(p.dst, from, p.bytes, cudaMemcpyHostToDevice, copy_), "cudaMemcpyAsync");
    }
    check(cudaEventRecord(copied_[s], copy_), "cudaEventRecord");
    if (st) {
      check(cudaEventRecord(st->dma_done, copy_), "cudaEventRecord");
      st->consumed = true;
    }
    loaded_[s] = k;
    return true;
  }

  at::Device device_;
  uint64_t slot_bytes_, host_bytes_ = 0;
  int slots_;
  std::vector<at::Tensor> slot_;  // slots_ of them, slot_bytes_ each
  cudaStream_t copy_ = nullptr;
  int64_t last_ = -1;                        // the module acquired last
  std::vector<cudaEvent_t> copied_, freed_;  // per slot: its last copy ended; its last reader ran
  std::vector<int64_t> loaded_;              // per slot: the module it holds (or is copying), -1 none
  std::vector<Module> modules_;
  std::vector<Staging> staging_;        // staging_buffers() of them, once something is staged
  double waited_s_ = 0;                 // in wait_for
  std::unique_ptr<HostStager> stager_;  // started by the first pageable piece
};

}  // namespace

#endif

std::unique_ptr<WeightStream> WeightStream::create(at::Device device, uint64_t slot_bytes, int slots) {
  if (slots < config::kMinStreamSlots || slots > config::kMaxStreamSlots)
    throw std::invalid_argument("weight streaming through " + std::to_string(slots) + " GPU slots: a plan has " +
                                std::to_string(config::kMinStreamSlots) + " to " +
                                std::to_string(config::kMaxStreamSlots));
#ifdef CASCADE_WITH_CUDA
  if (device.is_cuda()) return std::make_unique<CudaWeightStream>(device, slot_bytes, slots);
#else
  (void)device, (void)slot_bytes;  // a CPU-only build streams nothing
#endif
  return nullptr;
}

}  // namespace cascade::stage
