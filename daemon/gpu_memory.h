// The free memory of each GPU, for the coordinator's plan, asked without creating a CUDA
// context. The CUDA runtime's cudaMemGetInfo needs a context on the device: on every GPU
// that costs the coordinator start-up time, and the context holds some hundreds of MiB
// of the GPU's memory for the coordinator's whole life, memory no stage can then use.
#pragma once

#include <cstdint>
#include <vector>

namespace cascade::daemon {

// Free bytes of each GPU the CUDA runtime sees, in CUDA's order (CUDA_VISIBLE_DEVICES
// applies). From NVML (the driver's libnvidia-ml.so.1, opened at run time), CUDA's
// devices matched to NVML's by PCI bus id; where NVML is missing or fails, from
// cudaMemGetInfo on each device (creating the contexts). Empty in a build without CUDA
// or where no GPU is visible. Thread-safety: one caller at a time (NVML's init and
// shutdown pair).
std::vector<uint64_t> gpu_free_memory();

}  // namespace cascade::daemon
