#include "comm/message.h"

#include <cstring>

namespace cascade::comm {
namespace {

class Writer {
 public:
  template <typename T>
  void put(T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // x86-64 and aarch64 are little-endian: the wire order
    out.insert(out.end(), b, b + sizeof(T));
  }
  std::vector<uint8_t> out;
};

class Reader {
 public:
  Reader(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  template <typename T>
  T get(const char* what) {
    if (pos_ + sizeof(T) > n_) {
      throw CommError("step header truncated: " + std::to_string(n_) + " bytes, reading " + what + " at byte " +
                      std::to_string(pos_));
    }
    T v;
    std::memcpy(&v, d_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  size_t pos() const { return pos_; }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
};

// Counts beyond these mean a corrupt header, not a big batch.
constexpr uint32_t kMaxSeqs = 1 << 20;
constexpr uint32_t kMaxDims = 8;
constexpr uint32_t kMaxBias = 1 << 16;  // logit_bias entries of one sequence
constexpr uint32_t kMaxIds = 1 << 28;   // token ids of one step

// A count read from the wire, refused past `max` (a corrupt header, not a big batch).
uint32_t count(Reader& r, const char* what, uint32_t max) {
  const uint32_t n = r.get<uint32_t>(what);
  if (n > max) throw CommError(std::string("step header claims ") + std::to_string(n) + " " + what);
  return n;
}

void put_sampling(Writer& w, const SamplingParams& p) {
  w.put(p.temperature);
  w.put(p.top_k);
  w.put(p.top_p);
  w.put(p.min_p);
  w.put(p.presence_penalty);
  w.put(p.frequency_penalty);
  w.put(p.repetition_penalty);
  w.put(static_cast<uint32_t>(p.logit_bias.size()));
  for (const auto& [token, bias] : p.logit_bias) {
    w.put(token);
    w.put(bias);
  }
  w.put(p.logprobs);
  w.put(static_cast<uint8_t>(p.prompt_logprobs));
  w.put(p.seed);
}

SamplingParams get_sampling(Reader& r) {
  SamplingParams p;
  p.temperature = r.get<double>("temperature");
  p.top_k = r.get<int64_t>("top_k");
  p.top_p = r.get<double>("top_p");
  p.min_p = r.get<double>("min_p");
  p.presence_penalty = r.get<double>("presence_penalty");
  p.frequency_penalty = r.get<double>("frequency_penalty");
  p.repetition_penalty = r.get<double>("repetition_penalty");
  const uint32_t n = count(r, "logit_bias entries", kMaxBias);
  for (uint32_t i = 0; i < n; ++i) {
    const int64_t token = r.get<int64_t>("logit_bias token");
    p.logit_bias.emplace_back(token, r.get<float>("logit_bias value"));
  }
  p.logprobs = r.get<int32_t>("logprobs");
  p.prompt_logprobs = r.get<uint8_t>("prompt_logprobs") != 0;
  p.seed = r.get<uint64_t>("seed");
  return p;
}

}  // namespace

std::vector<int64_t> prefill_tokens(const std::vector<int64_t>& prompt, int64_t decoder_start) {
  std::vector<int64_t> t = prompt;
  if (decoder_start >= 0) t.push_back(decoder_start);
  return t;
}

std::vector<uint8_t> encode(const StepHeader& h) {
  Writer w;
  w.put(kWireMagic);
  w.put(kWireVersion);
  w.put(h.step_id);
  w.put(h.microbatch);
  w.put(static_cast<uint8_t>(h.kind));
  w.put(h.flags);
  w.put(h.dtype);
  w.put(static_cast<uint32_t>(h.seqs.size()));
  for (const SeqEntry& s : h.seqs) {
    w.put(s.slot);
    w.put(s.start_pos);
    w.put(s.n_tokens);
    put_sampling(w, s.sampling);
    w.put(static_cast<uint8_t>((s.sample ? 1 : 0) | (s.recompute ? 2 : 0) | (s.fed ? 4 : 0)));
    w.put(s.seq_len);
    w.put(s.context);
    w.put(static_cast<uint32_t>(s.forks.size()));
    for (const auto& [slot, seed] : s.forks) {
      w.put(slot);
      w.put(seed);
    }
  }
  w.put(static_cast<uint32_t>(h.shape.size()));
  for (int64_t d : h.shape) w.put(d);
  w.put(static_cast<uint32_t>(h.ids.size()));
  for (int64_t id : h.ids) w.put(id);
  return w.out;
}

StepHeader decode_step(const uint8_t* data, size_t size) {
  Reader r(data, size);
  const uint32_t magic = r.get<uint32_t>("magic");
  if (magic != kWireMagic) throw CommError("not a step header (bad magic number)");
  const uint16_t version = r.get<uint16_t>("version");
  if (version != kWireVersion) {
    throw CommError("step header wire version " + std::to_string(version) + ", this build speaks " +
                    std::to_string(kWireVersion) + ": every process must run the same cascade build");
  }
  StepHeader h;
  h.step_id = r.get<uint64_t>("step_id");
  h.microbatch = r.get<uint32_t>("microbatch");
  const uint8_t kind = r.get<uint8_t>("kind");
  if (kind > static_cast<uint8_t>(StepKind::kLogprobs))
    throw CommError("step header has unknown kind " + std::to_string(kind));
  h.kind = static_cast<StepKind>(kind);
  h.flags = r.get<uint8_t>("flags");
  h.dtype = r.get<uint8_t>("dtype");
  const uint32_t n = count(r, "sequences", kMaxSeqs);
  for (uint32_t i = 0; i < n; ++i) {
    SeqEntry s;
    s.slot = r.get<int64_t>("slot");
    s.start_pos = r.get<int64_t>("start_pos");
    s.n_tokens = r.get<int64_t>("n_tokens");
    s.sampling = get_sampling(r);
    const uint8_t bits = r.get<uint8_t>("entry flags");
    if (bits > 7) throw CommError("step header has unknown entry flags " + std::to_string(bits));
    s.sample = (bits & 1) != 0;
    s.recompute = (bits & 2) != 0;
    s.fed = (bits & 4) != 0;
    if (s.fed && (s.n_tokens != 1 || s.start_pos < 1 || s.recompute))
      throw CommError("step header feeds slot " + std::to_string(s.slot) +
                      " its sampled token, but the entry is not a decode entry (one token after position 0)");
    s.seq_len = r.get<int64_t>("seq_len");
    s.context = r.get<int64_t>("context");
    if (s.context < 0) throw CommError("step header has a negative encoder context " + std::to_string(s.context));
    const uint32_t forks = count(r, "forks", kMaxSeqs);
    for (uint32_t f = 0; f < forks; ++f) {
      const int64_t slot = r.get<int64_t>("fork slot");
      s.forks.emplace_back(slot, r.get<uint64_t>("fork seed"));
    }
    h.seqs.push_back(std::move(s));
  }
  const uint32_t dims = count(r, "payload dimensions", kMaxDims);
  for (uint32_t i = 0; i < dims; ++i) h.shape.push_back(r.get<int64_t>("shape"));
  const uint32_t ids = count(r, "token ids", kMaxIds);
  if (ids > (size - r.pos()) / sizeof(int64_t)) throw CommError("step header truncated: token ids");
  h.ids.resize(ids);
  for (uint32_t i = 0; i < ids; ++i) h.ids[i] = r.get<int64_t>("token id");
  if (r.pos() != size) throw CommError("step header has " + std::to_string(size - r.pos()) + " trailing bytes");
  return h;
}

}  // namespace cascade::comm
