#include "daemon/gpu_memory.h"

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <optional>
#endif

namespace cascade::daemon {

#ifdef CASCADE_WITH_CUDA
namespace {

// The NVML entry points used, as libnvidia-ml.so.1 exports them (nvml.h does not come
// with every toolkit; the library comes with the driver). 0 is NVML_SUCCESS.
struct NvmlMemory {
  unsigned long long total, free, used;  // nvmlMemory_t
};
using NvmlDevice = void*;
using NvmlInit = int (*)();
using NvmlShutdown = int (*)();
using NvmlByBusId = int (*)(const char*, NvmlDevice*);
using NvmlMemoryInfo = int (*)(NvmlDevice, NvmlMemory*);

// Free bytes of CUDA's devices 0..n-1 from NVML; nullopt where any step fails. The
// library stays loaded (it is small, and unloading a driver library buys nothing).
std::optional<std::vector<uint64_t>> from_nvml(int n) {
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return std::nullopt;
  const auto init = reinterpret_cast<NvmlInit>(dlsym(lib, "nvmlInit_v2"));
  const auto shutdown = reinterpret_cast<NvmlShutdown>(dlsym(lib, "nvmlShutdown"));
  const auto by_bus_id = reinterpret_cast<NvmlByBusId>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
  const auto memory = reinterpret_cast<NvmlMemoryInfo>(dlsym(lib, "nvmlDeviceGetMemoryInfo"));
  if (!init || !shutdown || !by_bus_id || !memory || init() != 0) return std::nullopt;
  std::vector<uint64_t> free;
  for (int g = 0; g < n; ++g) {
    char bus_id[64] = {};  // cudaDeviceGetPCIBusId needs no context
    NvmlDevice device = nullptr;
    NvmlMemory m{};
    if (cudaDeviceGetPCIBusId(bus_id, sizeof bus_id, g) != cudaSuccess || by_bus_id(bus_id, &device) != 0 ||
        memory(device, &m) != 0)
      break;
    free.push_back(m.free);
  }
  shutdown();
  if (static_cast<int>(free.size()) != n) return std::nullopt;
  return free;
}

}  // namespace

std::vector<uint64_t> gpu_free_memory() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) return {};
  if (std::optional<std::vector<uint64_t>> nvml = from_nvml(n)) return *nvml;
  std::vector<uint64_t> free;
  for (int g = 0; g < n; ++g) {
    size_t f = 0, total = 0;
    if (cudaSetDevice(g) == cudaSuccess && cudaMemGetInfo(&f, &total) == cudaSuccess) free.push_back(f);
  }
  return free;
}
#else
std::vector<uint64_t> gpu_free_memory() { return {}; }
#endif

}  // namespace cascade::daemon
