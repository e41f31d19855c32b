// The daemon's counters, gauges and histograms, rendered in the Prometheus text
// exposition format for GET /metrics (DESIGN §8).
//
// Thread-safety: every method may be called from any thread (one mutex; updates are
// a few per token, far below contention).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace cascade::daemon {

class Metrics {
 public:
  Metrics();
  void request_finished(int status);  // requests by status
  void set_in_flight(int64_t n);
  void set_queue_length(int64_t n);
  void set_kv_slots(int64_t used, int64_t total);
  void add_tokens(int64_t prompt, int64_t generated);
  void observe_ttft(double seconds);
  void observe_inter_token(double seconds);
  void set_stage_busy(const std::string& stage, double seconds);
  void add_open_connections(int64_t delta);  // +1 on accept, -1 on close
  void connection_evicted();                 // an incomplete connection dropped for a new one
  void stage_restarted();                    // the stages were restarted after a failure
  std::string render() const;

  struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // per bucket, not cumulative; last = +Inf
    double sum = 0;
    uint64_t count = 0;
    void observe(double v);
  };

 private:
  mutable std::mutex mu_;
  std::map<int, uint64_t> requests_;
  int64_t in_flight_ = 0, queue_ = 0, kv_used_ = 0, kv_total_ = 0, connections_ = 0;
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0, evicted_ = 0, restarts_ = 0;
  Histogram ttft_, inter_token_;
  std::map<std::string, double> stage_busy_;
};

}  // namespace cascade::daemon
