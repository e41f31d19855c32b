#include "daemon/http/metrics.h"

#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

TEST(Metrics, PrometheusText) {
  Metrics m;
  m.request_finished(200);
  m.request_finished(200);
  m.request_finished(429);
  m.set_in_flight(3);
  m.set_queue_length(2);
  m.set_kv_slots(3, 16);
  m.add_tokens(10, 4);
  m.observe_ttft(0.02);
  m.observe_ttft(7);
  m.observe_inter_token(0.003);
  m.set_stage_busy("stage 1 (rank 1, cpu:0)", 1.5);
  m.add_open_connections(1);
  m.add_open_connections(1);
  m.add_open_connections(-1);
  m.connection_evicted();
  m.stage_restarted();
  m.stage_restarted();
  const std::string t = m.render();
  for (const char* line :
       {"cascade_requests_total{status=\"200\"} 2", "cascade_requests_total{status=\"429\"} 1",
        "cascade_requests_in_flight 3", "cascade_queue_length 2", "cascade_kv_slots_used 3",
        "cascade_kv_slots_total 16", "cascade_open_connections 1", "cascade_prompt_tokens_total 10",
        "cascade_generated_tokens_total 4", "cascade_time_to_first_token_seconds_bucket{le=\"0.025\"} 1",
        "cascade_time_to_first_token_seconds_bucket{le=\"10\"} 2",
        "cascade_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2", "cascade_time_to_first_token_seconds_count 2",
        "cascade_inter_token_seconds_bucket{le=\"0.0025\"} 0", "cascade_inter_token_seconds_bucket{le=\"0.005\"} 1",
        "cascade_stage_busy_seconds_total{stage=\"stage 1 (rank 1, cpu:0)\"} 1.5",
        "cascade_connections_evicted_total 1", "cascade_stage_restarts_total 2",
        "# TYPE cascade_time_to_first_token_seconds histogram"}) {
    EXPECT_NE(t.find(std::string(line) + "\n"), std::string::npos) << "missing: " << line << "\n" << t;
  }
}

}  // namespace
}  // namespace cascade::daemon
