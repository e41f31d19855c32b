// `cascade bench` (DESIGN §9): one set of stage processes, the same workload run in
// sequential and in pipeline mode, side by side.
//
// The workload is closed-loop: `concurrency` clients, each sending its next request
// when the previous one finishes, until `requests` are done. Prompts are `prompt_len`
// random token ids (a fixed seed, so both modes see the same), each generating
// `new_tokens` greedy tokens past EOS. Per mode it reports output and total tokens/s,
// time to first token p50/p99, each stage's busy share of the wall time and the median
// time between a request's tokens; then the pipeline/sequential ratio, and the planner's
// predicted decode step of `concurrency` tokens (planner::predicted_step_seconds) beside
// the measured intervals. `trace` writes Chrome Trace Event JSON (one track per
// stage: compute, send and recv spans labelled with step and microbatch).
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace cascade::daemon {

struct BenchOptions {
  std::string config_file;
  std::vector<std::string> overrides;
  std::string mode = "both";  // sequential | pipeline | both
  int requests = 16;
  int prompt_len = 64;
  int new_tokens = 32;
  int concurrency = 8;
  std::string trace;  // Chrome trace path; empty = none
  bool json = false;
};

// Prints the report (a table, or one JSON object with --json) to `out`; progress to `log`.
int bench(const BenchOptions& opts, std::ostream& out, std::ostream& log);

}  // namespace cascade::daemon
