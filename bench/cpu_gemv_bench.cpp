// CPU decode GEMV speed against this machine's memory read bandwidth, side by side with
// ATen's at::linear, per weight type, instruction set and token count.
//   build/bench/cpu_gemv_bench [--threads N] [--in 2560] [--out 6912] [--tokens 1,16]
// The read bound is cpu_read_bandwidth(): 2 GiB read with the same threads, best of 5.
// Calls take their weight in turn from copies that fill --pool-mib (1 GiB), more than a
// server's last-level cache, so each call reads its weight from memory as a decode step
// does; figures are the best of 20 calls after a warm-up.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/mman.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
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

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');) out.push_back(std::stoll(t));
  return out;
}

// A copy of t in memory the kernel is asked to back with 2 MiB pages (MADV_HUGEPAGE
// before the first write), for measuring what TLB misses cost the kernels.
at::Tensor in_huge_pages(const at::Tensor& t) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t bytes = (static_cast<size_t>(t.nbytes()) + kHuge - 1) / kHuge * kHuge;
  void* p = nullptr;
  if (posix_memalign(&p, kHuge, bytes) != 0) throw std::bad_alloc();
  ::madvise(p, bytes, MADV_HUGEPAGE);
  std::memcpy(p, t.data_ptr(), t.nbytes());
  return at::from_blob(
      p, t.sizes(), [](void* q) { std::free(q); }, t.options());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU decode GEMV speed against the memory read bound"};
  int threads = 1;
  int64_t in = 2560, out = 6912;
  std::string tokens = "1,16";
  int64_t pool_mib = 1024;
  std::string only;
  bool huge = false;
  app.add_flag("--huge-pages", huge, "Weights in memory advised MADV_HUGEPAGE (2 MiB pages where the kernel allows)");
  app.add_option("--threads", threads, "Compute threads");
  app.add_option("--in", in, "Input features (K)");
  app.add_option("--out", out, "Output features (N)");
  app.add_option("--tokens", tokens, "Token counts, comma-separated");
  app.add_option("--types", only, "Weight types to run, comma-separated (default all)");
  app.add_option("--pool-mib", pool_mib, "MiB of weight copies used in turn (more than the last-level cache)");
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);
  cascade::stage::enable_cpu_matrix_units();  // ATen's bf16 GEMM below may use AMX
  const double bw = cascade::stage::cpu_read_bandwidth();
  std::printf("threads %d, weight [%lld, %lld], memory read %.1f GB/s\n", threads, static_cast<long long>(out),
              static_cast<long long>(in), bw);
  // The prefill bound: ATen's GEMM (OpenBLAS for float32, oneDNN for bfloat16) on a
  // 512-token block of this shape, with the same threads.
  for (const at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    const at::Tensor a = at::randn({512, in}).to(t), b = at::randn({in, out}).to(t);
    (void)at::mm(a, b);
    const double s = best_seconds(5, [&] { (void)at::mm(a, b); });
    std::printf("GEMM %s [512, %lld] x [%lld, %lld]: %.1f GFLOP/s\n", t == at::kFloat ? "float32" : "bfloat16",
                static_cast<long long>(in), static_cast<long long>(in), static_cast<long long>(out),
                2.0 * 512 * in * out / s / 1e9);
  }
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
    if (!only.empty() && ("," + only + ",").find(std::string(",") + ty.name + ",") == std::string::npos) continue;
    // Copies of the weight, used in turn, that together overflow the last-level cache:
    // every call reads its weight from memory, as a decode step does.
    const int64_t one = out * in * at::elementSize(ty.w);
    const int64_t copies = std::max<int64_t>(1, (pool_mib << 20) / one);
    std::vector<at::Tensor> ws;
    for (int64_t c = 0; c < copies; ++c) {
      const at::Tensor r = at::randn({out, in}).mul_(20);
      ws.push_back(ty.w == at::kChar ? r.clamp_(-127, 127).to(at::kChar) : r.to(ty.w));
      if (huge) ws.back() = in_huge_pages(ws.back());
    }
    const at::Tensor scale = at::rand({out}).add_(0.01);
    size_t turn = 0;
    const auto next = [&]() -> const at::Tensor& { return ws[turn++ % ws.size()]; };
    for (int64_t T : parse_list(tokens)) {
      const at::Tensor x = at::randn({T, in}).to(ty.x);
      const auto ours = [&] {
        const at::Tensor& w = next();
        return ty.w == at::kChar ? cascade::stage::cpu_int8_linear(x, w, scale) : cascade::stage::cpu_linear(x, w, {});
      };
      const std::function<void()> aten = [&] {
        const at::Tensor& w = next();
        if (ty.w == at::kChar)
          (void)at::linear(x.to(at::kFloat), w.to(at::kFloat)).mul_(scale);  // quant.cpp's ATen path
        else
          (void)at::linear(x, w.to(x.scalar_type()));
      };
      aten();
      const double ta = best_seconds(20, aten);
      for (const auto& isa : cascade::stage::cpu_gemv_isas()) {
        cascade::stage::set_cpu_gemv_isa(isa);
        if (!ours().defined()) {
          std::printf("%-9s %-8s %-7lld %10s %8s %9s %10.1f  (the kernels do not take this shape)\n", ty.name,
                      isa.c_str(), static_cast<long long>(T), "-", "-", "-", ta * 1e6);
          continue;
        }
        const double t = best_seconds(20, [&] { (void)ours(); });
        std::printf("%-9s %-8s %-7lld %10.1f %8.1f %8.0f%% %10.1f %7.2fx\n", ty.name, isa.c_str(),
                    static_cast<long long>(T), t * 1e6, one / t / 1e9, 100 * one / t / 1e9 / bw, ta * 1e6, ta / t);
      }
    }
  }
}
