// CUDA graphs for decode steps (issue 8). A GPU stage's decode step launches ~50
// kernels per layer; launched one by one from the host, that caps decode at a few
// tens of tokens/s whatever the GPU. DecodeGraphs captures the step once per bucket
// and afterwards replays it with one launch.
//
// A bucket is (module range, batch size rounded up to a power of two, cache span
// rounded up to a power of two from 64, input kind). Rows past the real batch are
// padding: token 0 / zero hidden state at position 0, written to the KV cache's spare
// slot, and cut off the output. The span bounds how much of the cache a step reads, so
// short sequences do not pay for max_seq_len.
//
// A prompt of one sequence from position 0 (run_prompt: the step that decides the time to
// its first token, ~400 launches from the host eagerly) is captured too, per (module
// range, KV slot, prompt length rounded up to a power of two from 16, input kind), up
// to kMaxPromptGraphTokens: rows past the prompt are padding (token 0, zero hidden
// state) after it, which causal attention keeps out of the prompt's own rows; they write
// K/V at the positions the sequence's next tokens overwrite before anything reads them.
// The slot is part of the key because a prompt's attention reads its slot's keys
// through a view. Other prefill steps keep the eager path. Only what can be captured
// (Model decides): no "dynamic" RoPE (host-side frequencies per sequence),
// no disk tier, no streamed weights. LLM.int8 layers are captured: their outlier split
// has fixed shapes and no host sync. A mixture-of-experts block reads its routing on the
// host, so a stage holding one is not captured (a GPU stage holding only the attention
// halves of a mixture of experts, its experts on another stage, is).
//
// Ownership: a Model owns its DecodeGraphs; the graphs hold static input/output
// buffers in a private memory pool. Thread-safety: none (the stage's step loop).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>

#include "stage/batch.h"
#include "stage/family.h"
#include "stage/kv_cache.h"

namespace cascade::stage {

class DecodeGraphs {
 public:
  // Runs the step's modules on x with ctx (the model's module loop).
  using Forward = std::function<at::Tensor(const at::Tensor& x, StepContext& ctx)>;

  // nullptr when this build has no CUDA code or `device` is not a CUDA device.
  static std::unique_ptr<DecodeGraphs> create(at::Device device);
  virtual ~DecodeGraphs() = default;

  // Runs one decode step (every sequence of `batch` adds one token) through the graph of
  // its bucket, capturing it on first use. input: ids [seqs] int64 or hidden [seqs, hidden]
  // (any device). Returns what `forward` returns, cut to the batch's rows.
  virtual at::Tensor run(const at::Tensor& input, const Batch& batch, KvCache& kv, int64_t begin, int64_t end,
                         const Forward& forward) = 0;
  // The step of a prompt that takes_prompt() accepts, through its bucket's graph
  // (captured on first use). input: ids [tokens] int64 or hidden [tokens, hidden].
  // Returns what `forward` returns: logits [1, vocab] where the range holds the LM head,
  // else hidden [tokens, hidden]; undefined where this bucket cannot be captured (its
  // eager warm-up or capture threw: then the caller runs the step eagerly, and the
  // bucket is not tried again).
  virtual at::Tensor run_prompt(const at::Tensor& input, const Batch& batch, KvCache& kv, int64_t begin, int64_t end,
                                const Forward& forward) = 0;
  virtual size_t captured() const = 0;         // graphs captured so far
  virtual double capture_seconds() const = 0;  // spent capturing them (warm-up run included)
};

constexpr int64_t kMaxPromptGraphTokens = 128;

// Whether run_prompt takes `batch`: one sequence of 2 to kMaxPromptGraphTokens tokens
// from position 0 (not a chunk of a longer prompt), the last row's logits only, whose
// bucket fits max_seq_len.
bool takes_prompt(const Batch& batch, int64_t max_seq_len);

// Power-of-two bucket >= n, at least `floor`, at most `cap` (n itself past cap).
int64_t graph_bucket(int64_t n, int64_t floor, int64_t cap);
// The rows a prompt of n tokens is padded to in its graph: graph_bucket from 16 (so 2
// to 16 tokens share one graph) to kMaxPromptGraphTokens.
int64_t prompt_bucket(int64_t n);

}  // namespace cascade::stage
