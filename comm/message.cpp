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

}  // namespace

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
    w.put(s.temperature);
    w.put(s.top_k);
    w.put(s.top_p);
    w.put(s.seed);
    w.put(static_cast<uint8_t>(s.sample));
  }
  w.put(static_cast<uint32_t>(h.shape.size()));
  for (int64_t d : h.shape) w.put(d);
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
  if (kind > static_cast<uint8_t>(StepKind::kShutdown))
    throw CommError("step header has unknown kind " + std::to_string(kind));
  h.kind = static_cast<StepKind>(kind);
  h.flags = r.get<uint8_t>("flags");
  h.dtype = r.get<uint8_t>("dtype");
  const uint32_t n = r.get<uint32_t>("sequence count");
  if (n > kMaxSeqs) throw CommError("step header claims " + std::to_string(n) + " sequences");
  for (uint32_t i = 0; i < n; ++i) {
    SeqEntry s;
    s.slot = r.get<int64_t>("slot");
    s.start_pos = r.get<int64_t>("start_pos");
    s.n_tokens = r.get<int64_t>("n_tokens");
    s.temperature = r.get<double>("temperature");
    s.top_k = r.get<int64_t>("top_k");
    s.top_p = r.get<double>("top_p");
    s.seed = r.get<uint64_t>("seed");
    s.sample = r.get<uint8_t>("sample") != 0;
    h.seqs.push_back(s);
  }
  const uint32_t dims = r.get<uint32_t>("rank");
  if (dims > kMaxDims) throw CommError("step header claims a payload of rank " + std::to_string(dims));
  for (uint32_t i = 0; i < dims; ++i) h.shape.push_back(r.get<int64_t>("shape"));
  if (r.pos() != size) throw CommError("step header has " + std::to_string(size - r.pos()) + " trailing bytes");
  return h;
}

}  // namespace cascade::comm
