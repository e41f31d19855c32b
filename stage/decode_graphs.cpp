#include "stage/decode_graphs.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <tuple>

#ifdef CASCADE_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace cascade::stage {

int64_t graph_bucket(int64_t n, int64_t floor, int64_t cap) {
  int64_t b = std::max<int64_t>(floor, 1);
  while (b < n) b *= 2;
  return std::min(b, std::max(cap, n));
}

#ifdef CASCADE_WITH_CUDA
namespace {

class CudaDecodeGraphs : public DecodeGraphs {
 public:
  explicit CudaDecodeGraphs(at::Device device) : device_(device), pool_(at::cuda::graph_pool_handle()) {}

  at::Tensor run(const at::Tensor& input, const Batch& batch, KvCache& kv, int64_t begin, int64_t end,
                 const Forward& forward) override {
    const int64_t B = static_cast<int64_t>(batch.seqs.size());
    TORCH_CHECK(kv.spare_slot() >= 0, "CUDA graphs need a KV cache with a spare slot");
    int64_t longest = 0;
    for (const SeqSlice& s : batch.seqs) longest = std::max(longest, s.start_pos + 1);
    const int64_t Bb = graph_bucket(B, 1, std::numeric_limits<int64_t>::max());
    const int64_t span = graph_bucket(longest, 64, kv.max_seq_len());
    const bool ids = input.scalar_type() == at::kLong;
    const Key key{begin, end, Bb, span, ids};

    kv.decode_index(batch, at::kCPU, span);  // checks slots and positions of the real rows
    // Pad rows sit at position 0 of the spare slot.
    Batch padded = batch;
    for (int64_t i = B; i < Bb; ++i) padded.seqs.push_back({kv.spare_slot(), 0, 1});
    std::vector<int64_t> slots, pos, context;  // context: encoder-decoder models' (pad rows 0)
    bool seq2seq = false;
    for (const SeqSlice& s : padded.seqs) {
      slots.push_back(s.slot);
      pos.push_back(s.start_pos);
      context.push_back(s.context);
      seq2seq = seq2seq || s.context > 0;
    }

    auto it = graphs_.find(key);
    const bool fresh = it == graphs_.end();
    if (fresh) {
      Entry e;
      const auto longs = at::TensorOptions().dtype(at::kLong).device(device_);
      e.slots = at::empty({Bb}, longs);
      e.pos = at::empty({Bb}, longs);
      if (seq2seq) e.context = at::empty({Bb}, longs);
      e.in = ids ? at::zeros({Bb}, longs) : at::zeros({Bb, input.size(1)}, input.options().device(device_));
      it = graphs_.emplace(key, std::move(e)).first;
    }
    Entry& e = it->second;
    const auto cpu_long = at::TensorOptions().dtype(at::kLong);
    e.slots.copy_(at::tensor(slots, cpu_long), /*non_blocking=*/true);
    e.pos.copy_(at::tensor(pos, cpu_long), /*non_blocking=*/true);
    if (e.context.defined()) e.context.copy_(at::tensor(context, cpu_long), /*non_blocking=*/true);
    if (B < Bb) e.in.narrow(0, B, Bb - B).zero_();
    e.in.narrow(0, 0, B).copy_(input, /*non_blocking=*/true);

    if (fresh) {
      const auto t0 = std::chrono::steady_clock::now();
      try {
        capture(e, padded, kv, span, forward);
        capture_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } catch (...) {
        graphs_.erase(it);  // the warm-up before capture is where a bad step throws
        throw;
      }
    }
    e.graph->replay();
    // A copy: the next replay of this graph overwrites e.out, and a channel may still be
    // sending this step's result on another stream.
    return e.out.narrow(0, 0, B).clone();
  }

  size_t captured() const override { return graphs_.size(); }
  double capture_seconds() const override { return capture_s_; }

 private:
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, bool>;  // begin, end, batch, span, ids?
  struct Entry {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    at::Tensor in, slots, pos, context, out;  // static buffers the graph reads and writes
  };

  void capture(Entry& e, const Batch& padded, KvCache& kv, int64_t span, const Forward& forward) {
    auto once = [&] {
      StepContext ctx{padded, e.pos, &kv, {}, {}, DecodeIndex{e.slots, e.pos, span, e.context}};
      return forward(e.in, ctx);
    };
    // Warm up on a side stream first (cuBLAS workspaces, lazily loaded kernels), as
    // capture requires; the warm-up writes the same K/V the replay writes again.
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, device_.index());
    c10::cuda::getCurrentCUDAStream(device_.index()).synchronize();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      once();
      side.synchronize();
      e.graph = std::make_unique<at::cuda::CUDAGraph>();
      e.graph->capture_begin(pool_, cudaStreamCaptureModeThreadLocal);
      e.out = once();
      e.graph->capture_end();
    }
    side.synchronize();
  }

  at::Device device_;
  decltype(at::cuda::graph_pool_handle()) pool_;
  std::map<Key, Entry> graphs_;
  double capture_s_ = 0;
};

}  // namespace

std::unique_ptr<DecodeGraphs> DecodeGraphs::create(at::Device device) {
  if (!device.is_cuda()) return nullptr;
  return std::make_unique<CudaDecodeGraphs>(device);
}
#else
std::unique_ptr<DecodeGraphs> DecodeGraphs::create(at::Device) { return nullptr; }  // a CPU-only build
#endif

}  // namespace cascade::stage
