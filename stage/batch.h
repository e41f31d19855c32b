// What one step computes: a ragged batch of sequences, each contributing a run of
// consecutive tokens (a whole prompt, a prefill chunk, or one decode token).
// Tokens of all sequences are concatenated, so activations are [tokens, hidden].
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace cascade::stage {

struct SeqSlice {
  int64_t slot = 0;         // KV-cache slot owned by the sequence (the coordinator assigns it)
  int64_t start_pos = 0;    // position of the first token of this slice
  int64_t n_tokens = 0;     // tokens of this sequence in the step
  bool all_logits = false;  // the LM head returns logits at every token, not only the last (echo's logprobs)
  int64_t seq_len = 0;      // length the sequence reaches at the end of this prefill; 0 = start_pos + n_tokens
  // Encoder-decoder models: positions [0, context) are the sequence's encoder input
  // (comm::SeqEntry::context), its decoder tokens follow; 0 = decoder-only.
  int64_t context = 0;
  // What length-dependent RoPE (dynamic, longrope) decides by: a prompt prefilled in
  // chunks counts as long as the whole prompt, as transformers sees it in one piece.
  int64_t length() const { return std::max(seq_len, start_pos + n_tokens); }
};

struct Batch {
  std::vector<SeqSlice> seqs;

  int64_t total_tokens() const {
    int64_t t = 0;
    for (const auto& s : seqs) t += s.n_tokens;
    return t;
  }
  // [tokens] int64 positions, in batch order.
  at::Tensor positions(at::Device device) const {
    std::vector<int64_t> p;
    p.reserve(static_cast<size_t>(total_tokens()));
    for (const auto& s : seqs)
      for (int64_t i = 0; i < s.n_tokens; ++i) p.push_back(s.start_pos + i);
    return at::tensor(p, at::TensorOptions().dtype(at::kLong)).to(device);
  }
  bool any_all_logits() const {
    for (const auto& s : seqs)
      if (s.all_logits) return true;
    return false;
  }
  // [rows] int64 rows of the flattened batch whose logits the LM head returns: each
  // sequence's last token, or all its tokens when it asks for all_logits.
  // Each sequence's last row in the logits the LM head returns for these rows (one row
  // a sequence, every token's for those that ask for all_logits): [seqs] indices.
  std::vector<int64_t> last_logit_rows() const {
    std::vector<int64_t> last;
    int64_t row = 0;
    for (const auto& s : seqs) {
      row += s.all_logits ? s.n_tokens : 1;
      last.push_back(row - 1);
    }
    return last;
  }
  at::Tensor logit_rows(at::Device device) const {
    std::vector<int64_t> r;
    int64_t row = 0;
    for (const auto& s : seqs) {
      for (int64_t i = s.all_logits ? 0 : s.n_tokens - 1; i < s.n_tokens; ++i) r.push_back(row + i);
      row += s.n_tokens;
    }
    return at::tensor(r, at::TensorOptions().dtype(at::kLong)).to(device);
  }
};

}  // namespace cascade::stage
