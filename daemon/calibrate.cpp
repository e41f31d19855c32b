#include "daemon/calibrate.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "stage/kernels/cpu_gemv.h"
#include "stage/kernels/quant.h"
#include "stage/weights/host_stager.h"
#include "stage/weights/weight_stream.h"

namespace cascade::daemon {
namespace {

using Clock = std::chrono::steady_clock;

// Best seconds of `runs` calls of f.
template <typename F>
double best_seconds(int runs, F&& f) {
  double best = 1e30;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// Seconds of one pass of x [tokens, in] over every weight of the pool, best of 3.
double pool_pass(const std::vector<at::Tensor>& pool, int64_t tokens) {
  const at::Tensor x = at::randn({tokens, pool.front().size(1)}).to(at::kBFloat16);
  (void)stage::cpu_linear(x, pool.front(), {});
  return best_seconds(3, [&] {
    for (const auto& w : pool) (void)stage::cpu_linear(x, w, {});
  });
}

// 256 MiB of pinned host memory, copied once to GPU 0 (the first copy sets things up).
at::Tensor pinned_block(const at::Device& gpu) {
  const at::Tensor host = at::empty({int64_t{256} << 20}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  (void)host.to(gpu);
  return host;
}

// Seconds of `pool_pass(pool, t)` for each t of `tokens` while another thread copies
// pinned memory to GPU 0 back to back (one copier for all); zeros without a GPU.
std::vector<double> pool_passes_beside_copies(const std::vector<at::Tensor>& pool, const std::vector<int64_t>& tokens) {
  std::vector<double> out(tokens.size(), 0.0);
  if (!at::hasCUDA()) return out;
  const at::Device gpu(at::kCUDA, 0);
  const at::Tensor host = pinned_block(gpu);
  std::atomic<bool> stop{false};
  std::thread copier([&] {
    while (!stop) (void)host.to(gpu);
  });
  struct Join {  // also when the pass throws
    std::atomic<bool>& stop;
    std::thread& t;
    ~Join() {
      stop = true;
      t.join();
    }
  } join{stop, copier};
  for (size_t i = 0; i < tokens.size(); ++i) out[i] = pool_pass(pool, tokens[i]);
  return out;
}

double pinned_h2d() {
  if (!at::hasCUDA()) return 0;
  const at::Device gpu(at::kCUDA, 0);
  const at::Tensor host = pinned_block(gpu);
  const double s = best_seconds(5, [&] { (void)host.to(gpu); });  // a blocking copy: returns when done
  return static_cast<double>(host.numel()) / s;
}

// Bytes/s the weight stream's `readers` copy a warm file of `bytes` into pinned memory
// (pageable without a GPU), best of 3: the disk tier's rate from the page cache. The
// file is written in `dir` and removed, also when a step throws.
double page_cache_read(const std::filesystem::path& dir, int64_t bytes, int readers) {
  std::filesystem::create_directories(dir);
  const std::string path = (dir / ("calibrate-read-" + std::to_string(::getpid()) + ".tmp")).string();
  struct Remove {
    std::string path;
    ~Remove() {
      std::error_code ignored;
      std::filesystem::remove(path, ignored);
    }
  } remove{path};
  {
    std::ofstream f(path, std::ios::binary);
    const std::vector<char> block(stage::HostStager::kChunk, '\x5a');
    for (int64_t done = 0; done < bytes; done += static_cast<int64_t>(block.size()))
      f.write(block.data(), static_cast<std::streamsize>(std::min<int64_t>(block.size(), bytes - done)));
    if (!f) throw std::runtime_error("calibrate: cannot write " + path + " to measure the page cache's read rate");
  }
  const at::Tensor dst = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(at::hasCUDA()));
  stage::HostStager stager(readers);
  const auto pass = [&] {
    stager.wait(stager.submit({{nullptr, dst.data_ptr(), static_cast<uint64_t>(bytes), path}}));
  };
  pass();  // warms the page cache (the file was just written, but maybe not all of it kept)
  return static_cast<double>(bytes) / best_seconds(3, pass);
}

}  // namespace

std::string rates_path() {
  if (const char* p = std::getenv("CASCADE_RATES")) return p;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/cascade/rates.json";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/cascade/rates.json";
}

Rates measure_rates(const CalibrateOptions& o, std::ostream& progress) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  Rates r;
  r.threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, cores - 1));
  at::set_num_threads(r.threads);
  stage::enable_cpu_matrix_units();
  // An anchor-sized projection [6912, 2560] in bf16 (35 MB), copies enough to fill the pool.
  const int64_t out = 6912, in = 2560, bytes = out * in * 2;
  const int64_t copies = std::max<int64_t>(2, (o.pool_mib << 20) / bytes);
  std::vector<at::Tensor> pool;
  for (int64_t i = 0; i < copies; ++i) pool.push_back(at::randn({out, in}).to(at::kBFloat16));
  progress << "calibrate: " << r.threads << (r.threads == 1 ? " thread, " : " threads, ") << copies << " bf16 weights ["
           << out << ", " << in << "]\n";
  r.cpu_compute = static_cast<double>(bytes * copies) / pool_pass(pool, 1);
  const double flops16 = 2.0 * 16 * static_cast<double>(out * in * copies);
  r.cpu_flops = flops16 / pool_pass(pool, 16);
  if (const std::vector<double> shared = pool_passes_beside_copies(pool, {1, 16}); shared[0] > 0) {
    r.cpu_compute_shared = static_cast<double>(bytes * copies) / shared[0];
    r.cpu_flops_shared = flops16 / shared[1];
  }
  // int8 rows of the same projections, twice as many copies: the same bytes.
  std::vector<stage::Int8Rows> rows;
  for (int64_t i = 0; i < 2 * copies; ++i) rows.push_back(stage::quantize_rows(pool[static_cast<size_t>(i % copies)]));
  pool.clear();
  const at::Tensor x = at::randn({1, in}).to(at::kBFloat16);
  (void)stage::cpu_int8_linear(x, rows.front().q, rows.front().scale);
  const double s8 = best_seconds(3, [&] {
    for (const auto& w : rows) (void)stage::cpu_int8_linear(x, w.q, w.scale);
  });
  r.cpu_compute_int8 = static_cast<double>(2 * copies * stage::int8_bytes({out, in}, stage::Int8Layout::kRows)) / s8;
  r.host_read = stage::cpu_read_bandwidth(std::max<int64_t>(o.pool_mib << 20, int64_t{512} << 20)) * 1e9;
  r.readers = stage::WeightStream::reader_threads();
  const std::filesystem::path rates_file(o.out.empty() ? rates_path() : o.out);
  r.disk_read = page_cache_read(rates_file.has_parent_path() ? rates_file.parent_path() : ".",
                                std::min<int64_t>(o.pool_mib, 512) << 20, r.readers);
  r.pinned_h2d = pinned_h2d();
  r.measured = now_utc();
  return r;
}

void save_rates(const Rates& r, const std::string& path) {
  const std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  nlohmann::json j = {{"cpu_compute", r.cpu_compute},
                      {"cpu_compute_int8", r.cpu_compute_int8},
                      {"cpu_flops", r.cpu_flops},
                      {"host_read", r.host_read},
                      {"disk_read", r.disk_read},
                      {"readers", r.readers},
                      {"pinned_h2d", r.pinned_h2d},
                      {"cpu_compute_shared", r.cpu_compute_shared},
                      {"cpu_flops_shared", r.cpu_flops_shared},
                      {"threads", r.threads},
                      {"measured", r.measured}};
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  if (!f) throw std::runtime_error("cannot write the rates file " + path);
}

std::optional<Rates> load_rates(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  try {
    const nlohmann::json j = nlohmann::json::parse(f);
    Rates r;
    r.cpu_compute = j.at("cpu_compute").get<double>();
    r.cpu_compute_int8 = j.value("cpu_compute_int8", 0.0);  // files from before it was measured lack it
    r.cpu_flops = j.at("cpu_flops").get<double>();
    r.host_read = j.value("host_read", 0.0);  // files from before it was measured lack it
    r.disk_read = j.value("disk_read", 0.0);  // files from before it was measured lack it
    r.readers = j.value("readers", 0);
    r.pinned_h2d = j.at("pinned_h2d").get<double>();
    r.cpu_compute_shared = j.value("cpu_compute_shared", 0.0);  // files from before it was measured lack it
    r.cpu_flops_shared = j.value("cpu_flops_shared", 0.0);      // likewise
    r.threads = j.at("threads").get<int>();
    r.measured = j.at("measured").get<std::string>();
    if (!(r.cpu_compute > 0) || !(r.cpu_flops > 0) || !(r.pinned_h2d >= 0) || !(r.cpu_compute_int8 >= 0) ||
        !(r.host_read >= 0) || !(r.disk_read >= 0) || !(r.cpu_compute_shared >= 0) || !(r.cpu_flops_shared >= 0))
      throw std::runtime_error("a rate is not positive");
    return r;
  } catch (const std::exception& e) {
    throw std::runtime_error("the rates file " + path + " is not one `cascade calibrate` wrote (" + e.what() +
                             "): run `cascade calibrate` again or delete it");
  }
}

void apply_rates(const Rates& r, planner::PlanRequest& req) {
  req.cpu_compute = r.cpu_compute;
  req.cpu_flops = r.cpu_flops;
  if (r.cpu_compute_int8 > 0) req.cpu_compute_int8 = r.cpu_compute_int8;
  if (r.host_read > 0) req.host_read = r.host_read;
  if (r.pinned_h2d > 0) req.pinned_h2d = r.pinned_h2d;
  if (r.cpu_compute_shared > 0) req.cpu_compute_shared = r.cpu_compute_shared;
  if (r.cpu_flops_shared > 0) req.cpu_flops_shared = r.cpu_flops_shared;
  if (r.disk_read > 0) req.disk_read = r.disk_read;
}

namespace {

std::string described(const Rates& r, const std::string& how, const std::string& path) {
  return how + " " + r.measured + " with " + std::to_string(r.threads) + " threads (" + path + ")";
}

}  // namespace

std::string plan_run_rates(planner::PlanRequest& req, bool has_gpu, std::ostream& progress,
                           const CalibrateOptions& how) {
  const std::string path = how.out.empty() ? rates_path() : how.out;
  if (const std::optional<Rates> saved = load_rates(path)) {
    apply_rates(*saved, req);
    return described(*saved, "measured", path);
  }
  const config::OffloadCompute oc = config::parse_offload_compute(req.offload_compute);
  const bool may_split = req.offload_compute == "auto" || oc.hybrid;
  const bool gpu_budgeted = std::any_of(req.budgets.begin(), req.budgets.end(),
                                        [](const planner::DeviceBudget& b) { return b.device.is_gpu(); });
  if (!may_split || !gpu_budgeted || !has_gpu) return "defaults (`cascade calibrate` measures this machine's)";
  progress << "cascade: measuring this machine's CPU and PCIe rates for the offload split (once; saved to " << path
           << ")\n";
  const Rates r = measure_rates(how, progress);
  save_rates(r, path);
  apply_rates(r, req);
  return described(r, "measured now,", path);
}

void run_calibrate(const CalibrateOptions& o, std::ostream& out) {
  const Rates r = measure_rates(o, out);
  const std::string path = o.out.empty() ? rates_path() : o.out;
  save_rates(r, path);
  std::ostringstream line;
  line << std::fixed << std::setprecision(1) << "CPU (" << r.threads << (r.threads == 1 ? " thread" : " threads")
       << "): bf16 weights at 1 token " << r.cpu_compute / 1e9 << " GB/s, int8 rows " << r.cpu_compute_int8 / 1e9
       << " GB/s, " << r.cpu_flops / 1e9 << " GFLOP/s at 16 tokens, memory read " << r.host_read / 1e9
       << " GB/s\npage cache read by " << r.readers << (r.readers == 1 ? " reader" : " readers")
       << " (the disk tier): " << r.disk_read / 1e9 << " GB/s\npinned host-to-GPU: ";
  if (r.pinned_h2d > 0)
    line << r.pinned_h2d / 1e9 << " GB/s; the CPU's bf16 rates while it runs: " << r.cpu_compute_shared / 1e9
         << " GB/s at 1 token, " << r.cpu_flops_shared / 1e9 << " GFLOP/s at 16";
  else
    line << "no GPU (the default stays)";
  out << line.str() << "\nsaved to " << path << " (plans made on this machine use it)\n";
}

}  // namespace cascade::daemon
