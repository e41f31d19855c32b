#include "comm/control.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

// The field lists, once each. nlohmann finds these through the types' namespaces.
namespace cascade::config {
NLOHMANN_JSON_SERIALIZE_ENUM(Mode, {{Mode::kSequential, "sequential"}, {Mode::kPipeline, "pipeline"}})
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RuntimeSection, mode, microbatches, prefill_chunk, max_batch, max_seq_len,
                                   threads_per_stage, heartbeat_timeout, step_timeout, cuda_graphs, pin_cores)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(QuantizationSection, mode, threshold, skip_modules)
}  // namespace cascade::config

namespace cascade::comm {

NLOHMANN_JSON_SERIALIZE_ENUM(Transport,
                             {{Transport::kShm, "shm"}, {Transport::kMpi, "mpi"}, {Transport::kNccl, "nccl"}})
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Link, peer, transport, name, tag)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Hop, begin, end, in, out)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Assignment, rank, label, job, heartbeats, exit_reason, model_dir, dtype, device,
                                   modules, disk_modules, streamed_modules, offload_folder, stream_slots, threads,
                                   cores, ring_bytes, trace, runtime, quantization, hops, rank_labels)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(LoadProgress, bytes, total, seconds)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UploadTimes, bytes, read_s, dma_wait_s, alloc_s, finish_s)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(StageReady, ok, error, host, pid, cores, core_list, seconds, device_start_s,
                                   connect_s, source_bytes, weight_bytes, zero_copy_bytes, folder_bytes, kv_bytes,
                                   streamed_bytes, stream_slots, folder_rebuilt, upload)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(StageStats, busy, steps)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(StageFailure, error)

namespace {

using nlohmann::json;

// Each message's "type" and the name its errors use.
template <typename T>
struct Kind;
#define CASCADE_CONTROL_KIND(T, type_, what_)  \
  template <>                                  \
  struct Kind<T> {                             \
    static constexpr const char* type = type_; \
    static constexpr const char* what = what_; \
  };
CASCADE_CONTROL_KIND(Assignment, "assignment", "stage assignment")
CASCADE_CONTROL_KIND(LoadProgress, "progress", "load progress report")
CASCADE_CONTROL_KIND(StageReady, "ready", "ready report")
CASCADE_CONTROL_KIND(StageStats, "stats", "stats report")
CASCADE_CONTROL_KIND(StageFailure, "error", "error report")
#undef CASCADE_CONTROL_KIND

template <typename T>
std::string encode_as(const T& m) {
  json j = m;
  j["type"] = Kind<T>::type;
  j["version"] = kControlVersion;
  return j.dump();
}

// Every fractional number in a message is seconds or a small factor. One past an int's
// range would make nlohmann's float-to-int conversion (into an int field) undefined
// behaviour, so such numbers are rejected here, whatever field holds them.
bool numbers_in_range(const json& j) {
  if (j.is_number_float()) return std::abs(j.get<double>()) < 2147483647.0;
  if (j.is_structured()) {
    for (const auto& v : j)
      if (!numbers_in_range(v)) return false;
  }
  return true;
}

json parse(const std::vector<uint8_t>& bytes, const char* what) {
  json j = json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) throw std::invalid_argument(std::string("malformed ") + what + ": not a JSON object");
  if (!numbers_in_range(j)) {
    throw std::invalid_argument(std::string("malformed ") + what + ": a number with a fraction or exponent is " +
                                "out of range (at most 2^31 in magnitude)");
  }
  return j;
}

// `j` as a T, after checking its version and type.
template <typename T>
T decode_as(const json& j) {
  const char* what = Kind<T>::what;
  try {
    if (j.at("version").get<int>() != kControlVersion) {
      // "assignment version 2, this build speaks 3"
      throw std::invalid_argument(std::string(Kind<T>::type) + " version " + j.at("version").dump() +
                                  ", this build speaks " + std::to_string(kControlVersion) +
                                  ": every process must run the same build");
    }
    if (j.at("type").get<std::string>() != Kind<T>::type) {
      throw std::invalid_argument(std::string("malformed ") + what + ": type " + j.at("type").dump());
    }
    return j.get<T>();
  } catch (const json::exception& e) {
    throw std::invalid_argument(std::string("malformed ") + what + ": " + e.what());
  }
}

}  // namespace

const char* to_string(Transport t) {
  switch (t) {
    case Transport::kShm:
      return "shm";
    case Transport::kMpi:
      return "mpi";
    case Transport::kNccl:
      return "nccl";
  }
  return "?";
}

std::string encode(const Assignment& m) { return encode_as(m); }
std::string encode(const LoadProgress& m) { return encode_as(m); }
std::string encode(const StageReady& m) { return encode_as(m); }
std::string encode(const StageStats& m) { return encode_as(m); }
std::string encode(const StageFailure& m) { return encode_as(m); }

Assignment decode_assignment(const std::vector<uint8_t>& bytes) {
  return decode_as<Assignment>(parse(bytes, Kind<Assignment>::what));
}

std::variant<LoadProgress, StageReady> decode_load(const std::vector<uint8_t>& bytes) {
  const json j = parse(bytes, "load report");
  if (j.contains("type") && j["type"] == Kind<LoadProgress>::type) return decode_as<LoadProgress>(j);
  return decode_as<StageReady>(j);
}

StageStats decode_stats(const std::vector<uint8_t>& bytes) {
  return decode_as<StageStats>(parse(bytes, Kind<StageStats>::what));
}

StageFailure decode_failure(const std::vector<uint8_t>& bytes) {
  return decode_as<StageFailure>(parse(bytes, Kind<StageFailure>::what));
}

}  // namespace cascade::comm
