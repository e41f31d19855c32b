// Messages that cross process boundaries (DESIGN §6), serialized explicitly: little-
// endian fixed-width fields behind a magic number and a wire version, so a stage built
// from another revision is rejected with both versions named instead of misread.
// Plain values; no sharing.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace cascade::comm {

class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr uint32_t kWireMagic = 0x43534344;  // "DCSC"
constexpr uint16_t kWireVersion = 2;

// Prefill/decode steps carry ids or hidden states down the route; the last stage
// answers with a kResult (sampled ids [seqs] int64) and, when the step asked for
// them, a kLogits message (last-position logits [seqs, vocab] float32). kShutdown
// travels the route like a step, so every stage stops after the steps before it.
enum class StepKind : uint8_t { kPrefill = 0, kDecode = 1, kResult = 2, kLogits = 3, kShutdown = 4 };
constexpr uint8_t kStepWantLogits = 1;  // StepHeader::flags

struct SeqEntry {
  int64_t slot = 0;
  int64_t start_pos = 0;
  int64_t n_tokens = 0;
  double temperature = 0;  // sampling, used by the last stage
  int64_t top_k = 0;
  double top_p = 1;
  uint64_t seed = 0;
  bool sample = true;  // false for a prefill chunk that is not the prompt's last
  bool operator==(const SeqEntry& o) const {
    return slot == o.slot && start_pos == o.start_pos && n_tokens == o.n_tokens && temperature == o.temperature &&
           top_k == o.top_k && top_p == o.top_p && seed == o.seed && sample == o.sample;
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
  bool operator==(const StepHeader& o) const {
    return step_id == o.step_id && microbatch == o.microbatch && kind == o.kind && flags == o.flags && seqs == o.seqs &&
           shape == o.shape && dtype == o.dtype;
  }
};

std::vector<uint8_t> encode(const StepHeader& h);
// Throws CommError naming what is wrong: magic, version (both numbers), truncation.
StepHeader decode_step(const uint8_t* data, size_t size);

}  // namespace cascade::comm
