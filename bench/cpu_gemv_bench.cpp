// CPU decode GEMV speed against this machine's memory read bandwidth, side by side with
// ATen's at::linear, per weight type, instruction set and token count.
//   build/bench/cpu_gemv_bench [--threads N] [--in 2560] [--out 6912] [--tokens 1,16]
// The read bound is a sum over 1 GiB with the same threads (best of 5). A weight of
// `out` x `in` is larger than the last-level cache at the default shape, so each call
// reads it from memory; figures are the best of 20 calls after a warm-up.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "stage/kernels/cpu_gemv.h"

namespace {

double best_seconds(int runs, const std::function<void()>& f) {
  double best = 1e30;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// GB/s of a plain read of 1 GiB split over the threads at::parallel_for uses.
double read_bandwidth() {
  const int64_t n = (int64_t{1} << 30) / 8;
  const at::Tensor buf = at::ones({n}, at::kLong);
  const auto* p = buf.data_ptr<int64_t>();
  std::vector<int64_t> sink(at::get_num_threads() + 1);
  const double s = best_seconds(5, [&] {
    at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
      int64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      int64_t i = b;
      for (; i + 4 <= e; i += 4) a0 += p[i], a1 += p[i + 1], a2 += p[i + 2], a3 += p[i + 3];
      for (; i < e; ++i) a0 += p[i];
      sink[at::get_thread_num()] += a0 + a1 + a2 + a3;
    });
  });
  return static_cast<double>(n * 8) / s / 1e9;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');) out.push_back(std::stoll(t));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU decode GEMV speed against the memory read bound"};
  int threads = 1;
  int64_t in = 2560, out = 6912;
  std::string tokens = "1,16";
  app.add_option("--threads", threads, "Compute threads");
  app.add_option("--in", in, "Input features (K)");
  app.add_option("--out", out, "Output features (N)");
  app.add_option("--tokens", tokens, "Token counts, comma-separated");
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);
  const double bw = read_bandwidth();
  std::printf("threads %d, weight [%lld, %lld], memory read %.1f GB/s\n", threads, static_cast<long long>(out),
              static_cast<long long>(in), bw);
  std::printf("%-9s %-8s %-7s %10s %8s %9s %10s %8s\n", "weight", "isa", "tokens", "us/call", "GB/s", "% of read",
              "aten us", "speedup");
  struct Type {
    const char* name;
    at::ScalarType w, x;
  };
  const Type types[] = {{"float32", at::kFloat, at::kFloat},
                        {"bfloat16", at::kBFloat16, at::kBFloat16},
                        {"float16", at::kHalf, at::kFloat},
                        {"int8", at::kChar, at::kFloat}};
  for (const Type& ty : types) {
    at::Tensor w = at::randn({out, in}).mul_(20);
    const at::Tensor scale = at::rand({out}).add_(0.01);
    w = ty.w == at::kChar ? w.clamp_(-127, 127).to(at::kChar) : w.to(ty.w);
    const double bytes = static_cast<double>(w.numel()) * w.element_size();
    for (int64_t T : parse_list(tokens)) {
      const at::Tensor x = at::randn({T, in}).to(ty.x);
      const std::function<void()> aten =
          ty.w == at::kChar ? std::function<void()>([&] {
            (void)at::linear(x.to(at::kFloat), w.to(at::kFloat)).mul_(scale);  // quant.cpp's ATen path
          })
                            : std::function<void()>([&] { (void)at::linear(x, w.to(x.scalar_type())); });
      aten();
      const double ta = best_seconds(20, aten);
      for (const auto& isa : cascade::stage::cpu_gemv_isas()) {
        cascade::stage::set_cpu_gemv_isa(isa);
        const auto ours = [&] {
          (void)(ty.w == at::kChar ? cascade::stage::cpu_int8_linear(x, w, scale)
                                   : cascade::stage::cpu_linear(x, w, {}));
        };
        ours();
        const double t = best_seconds(20, ours);
        std::printf("%-9s %-8s %-7lld %10.1f %8.1f %8.0f%% %10.1f %7.2fx\n", ty.name, isa.c_str(),
                    static_cast<long long>(T), t * 1e6, bytes / t / 1e9, 100 * bytes / t / 1e9 / bw, ta * 1e6, ta / t);
      }
    }
  }
}
