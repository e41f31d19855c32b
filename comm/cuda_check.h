// CUDA runtime failures as CommError exceptions that name the call (CUDA builds only).
// One definition for the channels and the stage's GPU helpers.
#pragma once

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime_api.h>

#include <string>

#include "comm/message.h"

namespace cascade::comm {

inline void cuda_check(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) throw CommError(what + ": " + cudaGetErrorString(rc));
}

}  // namespace cascade::comm
#endif
