// Streams the weights of offloaded modules to the GPU that computes them
// (offload_compute = "cuda:N", DESIGN §5). Their weights stay in host memory — pinned
// copies for the CPU tier, the mapped checkpoint or offload folder for the disk tier —
// and every step copies streamed module k into device slot k % S on a copy stream while
// the modules before it compute from the other slots. S is the plan's count
// (placement.stream_slots, which the planner reserves: at least a double buffer); a copy
// runs up to S - 1 modules ahead of the compute, so PCIe keeps copying through a hybrid
// offload's CPU-computed modules between streamed ones.
//
// Modules are built once, with weight tensors that are views into their slot: a
// module's weights hold its data only between acquire(k) and release(k), which the
// model calls around the module's forward. Order is kept with CUDA events: a slot is
// refilled only after the compute that read it, and compute waits for its copy.
//
// Ownership: owns the device slots, the copy stream and the events; the host
// tensors added stay alive here. Thread-safety: none (the stage's step loop).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>

namespace cascade::stage {

class WeightStream {
 public:
  // nullptr when this build has no CUDA code or `device` is not a CUDA device.
  // slot_bytes: the largest streamed module, each tensor rounded up to kAlign; slots:
  // how many, as the plan reserved them (config::kMinStreamSlots to kMaxStreamSlots,
  // else std::invalid_argument).
  static std::unique_ptr<WeightStream> create(at::Device device, uint64_t slot_bytes, int slots = 2);
  static constexpr uint64_t kAlign = 256;
  // Threads that read pageable pieces (the disk tier) into pinned staging: the cores
  // less one, at most 16, or CASCADE_STREAM_READERS (1 to 64). They wait on memory, not
  // on arithmetic: on the H100 host the anchor's disk row read at 7.0 tok/s with 4 and
  // 9.3 with 16 (docs/performance.md). `cascade calibrate` measures the page cache's read
  // rate with this many.
  static int reader_threads();
  // Pinned host staging buffers, each the size of a slot: 4, or CASCADE_STAGING_BUFFERS
  // (2 to 8). On the H100 host's disk row two ran at 11.4 tok/s, four at 12.8, eight no
  // faster (docs/performance.md, session 33).
  static int staging_buffers();
  virtual ~WeightStream() = default;

  // Registers a tensor of streamed module k (k = 0, 1, ... in execution order) and
  // returns the view of slot k % S that the module computes with. host: CPU, contiguous.
  // Pinned memory is copied straight to the GPU at full PCIe speed. Anything else — a
  // disk-tier tensor, whose bytes lie in `file` at `offset` (read with pread), or other
  // pageable memory — is read by reader threads into a pinned staging buffer ahead of
  // use, then copied.
  virtual at::Tensor add(int64_t k, const at::Tensor& host, const std::string& file = "", uint64_t offset = 0) = 0;
  // Streamed modules 0..n-1 exist, also one that added no tensor (every weight it reads
  // is resident: a head tied to a GPU-resident embedding). Call once all are added.
  virtual void reserve(int64_t n) = 0;
  // Before module k computes: queues its copy if its slot does not hold it, makes the
  // compute stream wait for it, and starts copying the next streamed modules (as many
  // as free slots allow) unless `prefetch_next` is false (then prefetch() does).
  virtual void acquire(int64_t k, bool prefetch_next) = 0;
  // After module k's kernels are queued: its slot may be refilled once they ran.
  virtual void release(int64_t k, bool prefetch_next) = 0;
  // Starts copying the modules after the last one acquired, if acquire/release held
  // them back. A stage whose hop ends with a streamed module calls it once the hop's output
  // has left: a device-to-host copy of that output would otherwise queue behind the next
  // module's weights on the copy engine and hold up the stage that computes next (a
  // hybrid offload's CPU stage), so PCIe and that stage's compute would not overlap.
  virtual void prefetch() = 0;
  virtual uint64_t host_bytes() const = 0;  // bytes streamed per step (all modules)
  virtual int slot_count() const = 0;       // the device slots, as created
  // The disk tier's reads since creation: the readers' bytes and busy seconds
  // (HostStager::stats), and the seconds acquire() blocked until a module's pieces were
  // read, the step loop idle. All zero where nothing is staged.
  struct ReadStats {
    uint64_t bytes = 0;
    double busy_s = 0, waited_s = 0;
  };
  virtual ReadStats read_stats() const = 0;
};

}  // namespace cascade::stage
