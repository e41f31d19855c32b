// The decode projections (stage/kernels/gemv.cuh, small_gemm.cuh) on this GPU: time and
// HBM bandwidth per projection shape of a model, weight type, token count, kernel (the
// GEMV with each threads-per-row choice, the tensor-core kernel, cuBLAS's GEMM alone)
// against the device copy bandwidth measured in the same run. What the threads-per-row
// choice in gemv.cuh and the GEMV/tensor-core split in small_gemm.cuh are made from.
//   build-gpu/bench/gpu_gemv_bench [--hidden 2560] [--intermediate 6912] [--q-out 7680] [--vocab 32000]
//                                  [--tokens 1,2,4,8,16,32,64] [--tpr 0] [--kernels gemv,mma,cublas]
// Calls take their weight in turn from copies that fill --pool-mib (1 GiB, 20× the
// H200's L2), so each reads from HBM as a decode step does; 200 calls timed by CUDA events.
#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "stage/kernels/cuda_kernels.h"

namespace {

namespace cuda = cascade::stage::cuda;

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');) out.push_back(std::stoi(t));
  return out;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Seconds per call of f(i) over `calls` calls, from CUDA events around them.
template <class F>
double seconds_per_call(int calls, const F& f) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  for (int i = 0; i < 20; ++i) f(i);  // warm-up
  check(cudaEventRecord(a), "record");
  for (int i = 0; i < calls; ++i) f(i);
  check(cudaEventRecord(b), "record");
  check(cudaEventSynchronize(b), "sync");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, a, b), "elapsed");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / 1e3 / calls;
}

struct Shape {
  const char* name;
  int N, K;
  bool gated;  // w [2N, K]
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"GPU decode GEMV bandwidth per shape, weight type, token count and threads per row"};
  int hidden = 2560, intermediate = 6912, q_out = 7680, vocab = 32000;
  std::string tokens = "1,2,4,8,16,32,64", tprs = "0", kernels = "gemv,mma,cublas";
  int64_t pool_mib = 1024;
  app.add_option("--hidden", hidden);
  app.add_option("--intermediate", intermediate);
  app.add_option("--q-out", q_out, "Rows of the fused q/k/v projection");
  app.add_option("--vocab", vocab);
  app.add_option("--tokens", tokens, "Token counts, comma-separated");
  app.add_option("--tpr", tprs, "The GEMV's threads per row, comma-separated (0: the kernel's own choice)");
  app.add_option("--kernels", kernels,
                 "Of gemv (up to 32 tokens), mma (tensor cores, 1-64) and cublas, comma-separated");
  app.add_option("--pool-mib", pool_mib, "MiB of weight copies used in turn");
  CLI11_PARSE(app, argc, argv);
  if (!at::hasCUDA()) {
    std::fprintf(stderr, "gpu_gemv_bench: no GPU\n");
    return 1;
  }
  const auto gpu = at::TensorOptions().device(at::kCUDA);
  const double bound = [&] {
    const at::Tensor src = at::empty({int64_t{1} << 30}, gpu.dtype(at::kByte)), dst = at::empty_like(src);
    return 2.0 * (1 << 30) / seconds_per_call(20, [&](int) { dst.copy_(src); }) / 1e9;
  }();
  std::printf("device copy: %.0f GB/s (read + write of 1 GiB): the bound below\n", bound);
  const std::vector<Shape> shapes = {{"qkv", q_out, hidden, false},
                                     {"o_proj", hidden, hidden, false},
                                     {"gate_up", intermediate, hidden, true},
                                     {"down", hidden, intermediate, false},
                                     {"head", vocab, hidden, false}};
  const auto want = [&](const std::string& k) {
    return ("," + kernels + ",").find("," + k + ",") != std::string::npos;
  };
  std::printf("%-8s %-5s %-6s %-7s %-4s %9s %9s %7s\n", "shape", "type", "tokens", "kernel", "tpr", "us", "GB/s",
              "% bound");
  for (const Shape& sh : shapes) {
    for (bool int8 : {false, true}) {
      const int64_t rows = sh.gated ? 2 * sh.N : sh.N, bytes = rows * sh.K * (int8 ? 1 : 2);
      const int copies = static_cast<int>(std::max<int64_t>(2, (pool_mib << 20) / bytes));
      std::vector<at::Tensor> w;
      for (int c = 0; c < copies; ++c)
        w.push_back(int8 ? at::randint(-127, 128, {rows, sh.K}, gpu.dtype(at::kChar))
                         : at::randn({rows, sh.K}, gpu.dtype(at::kBFloat16)));
      const at::Tensor scale = at::rand({rows}, gpu.dtype(at::kFloat));
      for (int T : parse_list(tokens)) {
        const at::Tensor x = at::randn({T, sh.K}, gpu.dtype(at::kBFloat16));
        const at::Tensor y = at::empty({T, sh.N}, gpu.dtype(at::kBFloat16));
        cuda::GemvArgs g;
        g.dtype = 2;
        g.int8 = int8;
        g.T = T;
        g.K = sh.K;
        g.N = sh.N;
        g.x = x.data_ptr();
        g.scale = int8 ? scale.data_ptr<float>() : nullptr;
        g.y = y.data_ptr();
        const auto report = [&](const char* kernel, int tpr, double s) {
          std::printf("%-8s %-5s %-6d %-7s %-4d %9.1f %9.0f %6.1f%%\n", sh.name, int8 ? "int8" : "bf16", T, kernel, tpr,
                      s * 1e6, bytes / s / 1e9, 100.0 * bytes / s / 1e9 / bound);
        };
        const auto ours = [&] {
          return seconds_per_call(200, [&](int i) {
            g.w = w[static_cast<size_t>(i % copies)].data_ptr();
            check(sh.gated ? cuda::fused_gemv_gated(g, nullptr) : cuda::fused_gemv(g, nullptr), "gemv");
          });
        };
        if (want("gemv") && T <= 32) {  // in launches of kMaxTokens above that
          for (int tpr : parse_list(tprs)) {
            g.kernel = 1;
            g.tpr = tpr;
            report("gemv", tpr, ours());
          }
        }
        g.tpr = 0;
        if (want("mma") && T <= 64 && cuda::tensor_core_applies(g)) {  // also where the default is cuBLAS
          g.kernel = 2;
          report("mma", 0, ours());
        }
        if (want("cublas") && !int8) {  // the GEMM alone: no epilogue, gated or not
          const double s = seconds_per_call(200, [&](int i) { at::linear(x, w[static_cast<size_t>(i % copies)]); });
          report("cublas", 0, s);
        }
      }
    }
  }
  return 0;
}
