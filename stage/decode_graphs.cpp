#include "stage/decode_graphs.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#ifdef CASCADE_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace cascade::stage {

bool takes_prompt(const Batch& batch, int64_t max_seq_len) {
  if (batch.seqs.size() != 1) return false;
  const SeqSlice& s = batch.seqs[0];
  return s.start_pos == 0 && s.n_tokens >= 2 && s.n_tokens <= kMaxPromptGraphTokens && !s.all_logits &&
         s.context == 0 && (s.seq_len == 0 || s.seq_len == s.n_tokens) && prompt_bucket(s.n_tokens) <= max_seq_len;
}

int64_t graph_bucket(int64_t n, int64_t floor, int64_t cap) {
  int64_t b = std::max<int64_t>(floor, 1);
  while (b < n) b *= 2;
  return std::min(b, std::max(cap, n));
}

int64_t prompt_bucket(int64_t n) { return graph_bucket(n, 16, kMaxPromptGraphTokens); }

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
    const Key key{begin, end, Bb, span, ids, -1};

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
      try {
        capture(e, [&] {
          StepContext ctx{padded, e.pos, &kv, {}, {}, DecodeIndex{e.slots, e.pos, span, e.context}};
          return forward(e.in, ctx);
        });
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

  at::Tensor run_prompt(const at::Tensor& input, const Batch& batch, KvCache& kv, int64_t begin, int64_t end,
                        const Forward& forward) override {
    TORCH_CHECK(takes_prompt(batch, kv.max_seq_len()), "not a prompt a CUDA graph takes");
    const SeqSlice& s = batch.seqs[0];
    const int64_t n = s.n_tokens, L = prompt_bucket(n);
    const bool ids = input.scalar_type() == at::kLong;
    const Key key{begin, end, L, 0, ids, s.slot};
    if (uncapturable_.count(key)) return {};
    Batch padded;
    padded.seqs.push_back({s.slot, 0, L});
    auto it = graphs_.find(key);
    const bool fresh = it == graphs_.end();
    if (fresh) {
      Entry e;
      const RowIndex rows = kv.row_index(padded, device_);  // checks the slot and the span
      e.slots = rows.slots;
      e.pos = rows.pos;
      e.last = at::empty({1}, at::TensorOptions().dtype(at::kLong).device(device_));
      e.in = ids ? at::zeros({L}, e.pos.options()) : at::zeros({L, input.size(1)}, input.options().device(device_));
      it = graphs_.emplace(key, std::move(e)).first;
    }
    Entry& e = it->second;
    e.last.fill_(n - 1);  // the prompt's last row: the one whose logits the LM head returns
    if (n < L) e.in.narrow(0, n, L - n).zero_();
    e.in.narrow(0, 0, n).copy_(input, /*non_blocking=*/true);
    if (fresh) {
      try {
        capture(e, [&] {
          StepContext ctx{padded, e.pos, &kv, {}, {}, {}, RowIndex{e.slots, e.pos}};
          ctx.logit_rows = e.last;
          return forward(e.in, ctx);
        });
      } catch (const std::exception&) {  // e.g. a family whose prompt path syncs: eager from now on
        graphs_.erase(it);
        uncapturable_.insert(key);
        return {};
      }
    }
    e.graph->replay();
    // Logits [1, vocab] where the range holds the LM head, else the hidden rows [L, hidden]
    // cut to the prompt's; a copy either way (as run() says).
    return e.out.size(0) == L ? e.out.narrow(0, 0, n).clone() : e.out.clone();
  }

  size_t captured() const override { return graphs_.size(); }
  double capture_seconds() const override { return capture_s_; }

 private:
  // begin, end, batch (decode) or prompt rows, span (decode; 0 for a prompt), ids?, slot (a
  // prompt's; -1 for decode).
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, bool, int64_t>;
  struct Entry {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    at::Tensor in, slots, pos, context, last, out;  // static buffers the graph reads and writes
  };

  // Captures once() (the step on e's buffers) into e.graph, its result into e.out.
  template <class Once>
  void capture(Entry& e, const Once& once) {
    const auto t0 = std::chrono::steady_clock::now();
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
      try {
        e.out = once();
      } catch (...) {
        try {
          e.graph->capture_end();  // ends the stream's capture, whatever it reports
        } catch (...) {
        }
        throw;
      }
      e.graph->capture_end();
    }
    side.synchronize();
    capture_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  at::Device device_;
  decltype(at::cuda::graph_pool_handle()) pool_;
  std::map<Key, Entry> graphs_;
  std::set<Key> uncapturable_;  // prompt buckets whose capture threw
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
