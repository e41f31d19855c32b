// The cost model's rates measured on this machine (`cascade calibrate`), kept in a small
// JSON file that planning reads when it exists. Without the file the planner uses the
// defaults in planner/plan.h (measured on the H100 and H200 machines), so plans stay
// the same on every machine until someone calibrates.
//
// What is measured: the CPU kernels' (stage/kernels/cpu_gemv.h) bfloat16 and int8 weight
// rates at one token and bfloat16 FLOP rate at 16 tokens, with `threads` threads, over a
// pool of weight copies larger than the caches; the host's memory read rate with those
// threads; the page cache's read rate as the weight stream's readers see it (a file
// written beside the rates file, read warm into pinned memory, removed); pinned
// host-to-GPU copy bandwidth where a GPU exists. Planning measures them itself, once,
// where a hybrid split needs them (plan_run_rates below). Thread-safety: none needed
// (one call at start-up).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>

#include "planner/plan.h"

namespace cascade::daemon {

struct Rates {
  double cpu_compute = 0;       // bytes of bf16 weights per second, one token
  double cpu_compute_int8 = 0;  // bytes of int8 rows (scales included) per second, one token; 0: not measured
  double cpu_flops = 0;         // FLOP/s at 16 tokens
  double host_read = 0;         // bytes/s the host's memory reads with `threads` threads; 0: not measured
  // Bytes/s the disk tier's readers (WeightStream::reader_threads()) copy a file's cached
  // pages into pinned memory; 0: not measured. A cold disk is slower: not measured.
  double disk_read = 0;
  int readers = 0;        // the readers disk_read was measured with
  double pinned_h2d = 0;  // bytes/s; 0 = no GPU measured
  // cpu_compute while pinned host-to-GPU copies run back to back beside it (a hybrid
  // step's CPU stage beside the weight stream: both read the host's memory); 0 = no GPU.
  double cpu_compute_shared = 0;
  double cpu_flops_shared = 0;  // cpu_flops beside the same copies; 0 = no GPU
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
// Overrides the request's defaults with the measured rates (a rate of 0 keeps its default).
// The disk tier's rate is the slower of disk_read and PCIe where both are measured.
void apply_rates(const Rates& r, planner::PlanRequest& req);

// The rates a plan for `req` uses, applied to it; returns where they came from. The file
// at rates_path() where it exists; else, where `req` may split offloaded modules between
// the CPU and a GPU (offload_compute auto or cpu+cuda:N, and a GPU budgeted) and this
// machine has a GPU, they are measured now (a few seconds, progress on `progress`) and
// saved there (with `how`), so it happens once per machine; else the defaults.
std::string plan_run_rates(planner::PlanRequest& req, bool has_gpu, std::ostream& progress,
                           const CalibrateOptions& how = {});

// `cascade calibrate`: measures, saves and prints the rates (at o.out, else rates_path()).
void run_calibrate(const CalibrateOptions& o, std::ostream& out);

}  // namespace cascade::daemon
