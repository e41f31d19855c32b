// gpu_free_memory against the CUDA runtime's own figure, and the reason it exists: it
// leaves no CUDA context behind (asked through the driver's primary-context state,
// which is then seen to turn active once cudaMemGetInfo runs). Without a GPU it must
// be empty.
#include "daemon/gpu_memory.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <iostream>

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#endif

namespace cascade::daemon {
namespace {

#ifdef CASCADE_WITH_CUDA
// Whether device `ordinal`'s primary context is active, from the driver API (opened at
// run time: the test does not link libcuda); -1 where it cannot be asked.
int primary_context_active(int ordinal) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return -1;
  const auto init = reinterpret_cast<int (*)(unsigned)>(dlsym(lib, "cuInit"));
  const auto get = reinterpret_cast<int (*)(int*, int)>(dlsym(lib, "cuDeviceGet"));
  const auto state = reinterpret_cast<int (*)(int, unsigned*, int*)>(dlsym(lib, "cuDevicePrimaryCtxGetState"));
  int device = 0, active = 0;
  unsigned flags = 0;
  if (!init || !get || !state || init(0) != 0 || get(&device, ordinal) != 0 || state(device, &flags, &active) != 0)
    return -1;
  return active != 0 ? 1 : 0;
}
#endif

TEST(GpuMemory, FreeBytesOfEachGpuWithoutACudaContext) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<uint64_t> free = gpu_free_memory();  // first: no CUDA call before it
  const auto t1 = std::chrono::steady_clock::now();
  if (!at::hasCUDA()) {
    EXPECT_TRUE(free.empty());
    GTEST_SKIP() << "no GPU: the list is empty, as it must be";
  }
#ifdef CASCADE_WITH_CUDA
  int n = 0;
  ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  ASSERT_EQ(static_cast<int>(free.size()), n);
  const int before = primary_context_active(0);
  if (before < 0) GTEST_SKIP() << "the driver's context state cannot be asked here";
  EXPECT_EQ(before, 0) << "gpu_free_memory created a CUDA context on device 0";
  for (int g = 0; g < n; ++g) {
    size_t cuda_free = 0, total = 0;
    const auto t2 = std::chrono::steady_clock::now();
    ASSERT_EQ(cudaSetDevice(g), cudaSuccess);
    ASSERT_EQ(cudaMemGetInfo(&cuda_free, &total), cudaSuccess);
    const auto t3 = std::chrono::steady_clock::now();
    EXPECT_GT(free[g], 0u) << "GPU " << g;
    EXPECT_LE(free[g], total) << "GPU " << g;
    // cudaMemGetInfo's figure is after its own context took its share (a few hundred MiB).
    const double gap = static_cast<double>(free[g]) - static_cast<double>(cuda_free);
    EXPECT_LT(std::abs(gap), 2.0 * (1ull << 30)) << "GPU " << g << ": NVML " << free[g] << ", CUDA " << cuda_free;
    const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
    std::cout << "GPU " << g << ": free " << free[g] << " B without a context, " << cuda_free
              << " B with one; all GPUs through NVML " << ms(t1 - t0) << " ms, this one's context and cudaMemGetInfo "
              << ms(t3 - t2) << " ms\n";
  }
  EXPECT_EQ(primary_context_active(0), 1) << "the context check cannot see a context";
#endif
}

}  // namespace
}  // namespace cascade::daemon
