// Messages that cross process boundaries (DESIGN §6), serialized explicitly: little-
// endian fixed-width fields behind a magic number and a wire version, so a stage built
// from another revision is rejected with both versions named instead of misread.
// Plain values; no sharing.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/sampling.h"

namespace cascade::comm {

class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr uint32_t kWireMagic = 0x43534344;  // "DCSC"
constexpr uint16_t kWireVersion = 6;

// Prefill/decode steps carry ids or hidden states down the route; the last stage
// answers with a kResult: the sampled ids [rows] int64, one row per sequence in order,
// then one per fork (SeqEntry::forks) in order, -1 where a sequence was not sampled.
// When the step asked for them it then sends a kLogits message (last-position logits
// [seqs, vocab] float32) and a kLogprobs message: float64 [records, 4 + 2K], a record
// per scored token: result row, position, token, log-probability (NaN: none, for a
// prompt's first token), then K (token, log-probability) pairs of the most likely
// tokens (token -1 past a row's own count), K the largest count the step asked for.
// A prompt's tokens are scored at their positions, a sampled token at the position
// after the step's last. kShutdown travels the route like a step, so every stage stops
// after the steps before it.
enum class StepKind : uint8_t {
  kPrefill = 0,
  kDecode = 1,
  kResult = 2,
  kLogits = 3,
  kShutdown = 4,
  kLogprobs = 5,
};
constexpr uint8_t kStepWantLogits = 1;    // StepHeader::flags
constexpr uint8_t kStepWantLogprobs = 2;  // some sequence asks for logprobs

struct SeqEntry {
  int64_t slot = 0;
  int64_t start_pos = 0;
  int64_t n_tokens = 0;
  SamplingParams sampling;  // used by the last stage
  bool sample = true;       // false for a prefill chunk that is not the prompt's last
  // n > 1: on the prompt's last chunk, after running the step, every stage copies this
  // slot's KV prefix [0, start_pos + n_tokens) into each fork's slot, and the last
  // stage samples each fork's first token from the same logits with the fork's seed
  // (the fork's other options are this entry's). (slot, seed) pairs.
  std::vector<std::pair<int64_t, uint64_t>> forks;
  // The sequence's tokens [0, seq_len) re-run from their ids (start_pos 0 first), keeping
  // its sampler: length-dependent RoPE switched (RopeConfig::recompute_at).
  bool recompute = false;
  // A decode entry (n_tokens 1) whose input token is the one this slot's sequence was
  // sampled in its previous step, which the stage holding both the embedding and the LM
  // head kept (Executor::feeds_sampled): the coordinator issued this step before that
  // token came back, and the payload holds a placeholder (-1) in its place.
  bool fed = false;
  // Length the sequence reaches when this prefill (all its chunks) ends, which
  // length-dependent RoPE decides by; 0 = start_pos + n_tokens.
  int64_t seq_len = 0;
  // Encoder-decoder models: the sequence's positions [0, context) are its encoder input
  // (the prompt), which its first prefill carries whole, followed by the decoder's
  // start token; every step of the sequence carries the same context. 0: decoder-only.
  int64_t context = 0;
  // The LM head's logits at every token of this entry (prompt logprobs), not only its
  // last: a recompute's tokens were scored when they were first run.
  bool all_logits() const { return sampling.prompt_logprobs && !recompute; }
  bool operator==(const SeqEntry& o) const {
    return slot == o.slot && start_pos == o.start_pos && n_tokens == o.n_tokens && sampling == o.sampling &&
           sample == o.sample && forks == o.forks && recompute == o.recompute && fed == o.fed && seq_len == o.seq_len &&
           context == o.context;
  }
};

struct StepHeader {
  uint64_t step_id = 0;
  uint32_t microbatch = 0;
  StepKind kind = StepKind::kPrefill;
  uint8_t flags = 0;
  std::vector<SeqEntry> seqs;
  std::vector<int64_t> shape;  // of the payload that follows: [tokens] ids or [tokens, hidden]
  uint8_t dtype = 0;           // storage::scalar type code of the payload
  // The step's token ids [tokens] when some sequence's sampler needs its prompt
  // (SamplingParams::needs_prompt): the last stage sees hidden states, not ids.
  std::vector<int64_t> ids;
  // Rows of the kResult: one per sequence, then one per fork.
  size_t result_rows() const {
    size_t n = seqs.size();
    for (const auto& s : seqs) n += s.forks.size();
    return n;
  }
  bool operator==(const StepHeader& o) const {
    return step_id == o.step_id && microbatch == o.microbatch && kind == o.kind && flags == o.flags && seqs == o.seqs &&
           shape == o.shape && dtype == o.dtype && ids == o.ids;
  }
};

// The tokens a sequence's prefill runs: its prompt, then, for an encoder-decoder model
// (decoder_start >= 0), the decoder's start token (SeqEntry::context = the prompt's length).
std::vector<int64_t> prefill_tokens(const std::vector<int64_t>& prompt, int64_t decoder_start);

std::vector<uint8_t> encode(const StepHeader& h);
// Throws CommError naming what is wrong: magic, version (both numbers), truncation.
StepHeader decode_step(const uint8_t* data, size_t size);

}  // namespace cascade::comm
