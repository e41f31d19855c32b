#include "daemon/http/metrics.h"

#include <algorithm>
#include <sstream>

namespace cascade::daemon {

void Metrics::Histogram::observe(double v) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[i];
  sum += v;
  ++count;
}

Metrics::Metrics() {
  ttft_.bounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  inter_token_.bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
  ttft_.counts.assign(ttft_.bounds.size() + 1, 0);
  inter_token_.counts.assign(inter_token_.bounds.size() + 1, 0);
}

void Metrics::request_finished(int status) {
  std::lock_guard<std::mutex> l(mu_);
  ++requests_[status];
}
void Metrics::set_in_flight(int64_t n) {
  std::lock_guard<std::mutex> l(mu_);
  in_flight_ = n;
}
void Metrics::set_queue_length(int64_t n) {
  std::lock_guard<std::mutex> l(mu_);
  queue_ = n;
}
void Metrics::set_kv_slots(int64_t used, int64_t total) {
  std::lock_guard<std::mutex> l(mu_);
  kv_used_ = used;
  kv_total_ = total;
}
void Metrics::add_tokens(int64_t prompt, int64_t generated) {
  std::lock_guard<std::mutex> l(mu_);
  prompt_tokens_ += static_cast<uint64_t>(prompt);
  generated_tokens_ += static_cast<uint64_t>(generated);
}
void Metrics::observe_ttft(double s) {
  std::lock_guard<std::mutex> l(mu_);
  ttft_.observe(s);
}
void Metrics::observe_inter_token(double s) {
  std::lock_guard<std::mutex> l(mu_);
  inter_token_.observe(s);
}
void Metrics::set_stage_busy(const std::string& stage, double s) {
  std::lock_guard<std::mutex> l(mu_);
  stage_busy_[stage] = s;
}

void Metrics::add_open_connections(int64_t delta) {
  std::lock_guard<std::mutex> l(mu_);
  connections_ += delta;
}

void Metrics::connection_evicted() {
  std::lock_guard<std::mutex> l(mu_);
  ++evicted_;
}

void Metrics::stage_restarted() {
  std::lock_guard<std::mutex> l(mu_);
  ++restarts_;
}

namespace {

void histogram(std::ostringstream& o, const char* name, const char* help, const Metrics::Histogram& h) {
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cum += h.counts[i];
    o << name << "_bucket{le=\"" << h.bounds[i] << "\"} " << cum << "\n";
  }
  cum += h.counts.back();
  o << name << "_bucket{le=\"+Inf\"} " << cum << "\n"
    << name << "_sum " << h.sum << "\n"
    << name << "_count " << h.count << "\n";
}

void scalar(std::ostringstream& o, const char* name, const char* type, const char* help, double v) {
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << v << "\n";
}

}  // namespace

std::string Metrics::render() const {
  std::lock_guard<std::mutex> l(mu_);
  std::ostringstream o;
  o << "# HELP cascade_requests_total Completion requests answered, by HTTP status.\n"
    << "# TYPE cascade_requests_total counter\n";
  for (const auto& [status, n] : requests_) o << "cascade_requests_total{status=\"" << status << "\"} " << n << "\n";
  scalar(o, "cascade_requests_in_flight", "gauge", "Requests holding a KV slot.", static_cast<double>(in_flight_));
  scalar(o, "cascade_queue_length", "gauge", "Requests waiting for a KV slot.", static_cast<double>(queue_));
  scalar(o, "cascade_kv_slots_used", "gauge", "KV-cache slots in use.", static_cast<double>(kv_used_));
  scalar(o, "cascade_kv_slots_total", "gauge", "KV-cache slots (runtime.max_batch).", static_cast<double>(kv_total_));
  scalar(o, "cascade_open_connections", "gauge", "Client connections open (server.max_connections caps them).",
         static_cast<double>(connections_));
  scalar(o, "cascade_connections_evicted_total", "counter",
         "Connections that had not sent a whole request, dropped (oldest first) to make room.",
         static_cast<double>(evicted_));
  scalar(o, "cascade_stage_restarts_total", "counter", "Times the stages were restarted after a stage failed.",
         static_cast<double>(restarts_));
  scalar(o, "cascade_prompt_tokens_total", "counter", "Prompt tokens prefilled.", static_cast<double>(prompt_tokens_));
  scalar(o, "cascade_generated_tokens_total", "counter", "Tokens generated.", static_cast<double>(generated_tokens_));
  histogram(o, "cascade_time_to_first_token_seconds", "From request admission to its first token.", ttft_);
  histogram(o, "cascade_inter_token_seconds", "Between consecutive tokens of a request.", inter_token_);
  o << "# HELP cascade_stage_busy_seconds_total Seconds each stage spent computing steps.\n"
    << "# TYPE cascade_stage_busy_seconds_total counter\n";
  for (const auto& [stage, s] : stage_busy_)
    o << "cascade_stage_busy_seconds_total{stage=\"" << stage << "\"} " << s << "\n";
  return o.str();
}

}  // namespace cascade::daemon
