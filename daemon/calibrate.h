// The cost model's rates measured on this machine (`cascade calibrate`), kept in a small
// JSON file that planning reads when it exists. Without the file the planner uses the
// defaults in planner/plan.h (measured on the H100 and H200 machines), so plans stay
// the same on every machine until someone calibrates.
//
// What is measured: the CPU kernels' (stage/kernels/cpu_gemv.h) bfloat16 weight rate at
// one token and FLOP rate at 16 tokens, with `threads` threads, over a pool of weight
// copies larger than the caches; pinned host-to-GPU copy bandwidth where a GPU exists.
// Thread-safety: none needed (one call at start-up).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>

#include "planner/plan.h"

namespace cascade::daemon {

struct Rates {
  double cpu_compute = 0;  // bytes of bf16 weights per second, one token
  double cpu_flops = 0;    // FLOP/s at 16 tokens
  double pinned_h2d = 0;   // bytes/s; 0 = no GPU measured
  int threads = 0;
  std::string measured;  // when, ISO 8601 UTC
};

struct CalibrateOptions {
  int threads = 0;          // 0 = the cores less one (a CPU stage beside one GPU stage)
  int64_t pool_mib = 1024;  // weight copies read in turn
  std::string out;          // "" = rates_path()
};

// $CASCADE_RATES, else $XDG_CACHE_HOME/cascade/rates.json, else ~/.cache/cascade/rates.json.
std::string rates_path();
Rates measure_rates(const CalibrateOptions& o, std::ostream& progress);
void save_rates(const Rates& r, const std::string& path);
// nullopt when `path` does not exist; throws std::runtime_error naming the path when it
// is not a rates file.
std::optional<Rates> load_rates(const std::string& path);
// Overrides the request's defaults with the measured rates (a GPU rate of 0 keeps its default).
void apply_rates(const Rates& r, planner::PlanRequest& req);

// `cascade calibrate`: measures, saves and prints the rates.
void run_calibrate(const CalibrateOptions& o, std::ostream& out);

}  // namespace cascade::daemon
