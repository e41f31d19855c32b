// The launchers of Cascade's own CUDA kernels (stage/*.cu), for the C++ wrappers that
// check shapes and pass LibTorch's stream (stage/int8_kernels.h, stage/fused_kernels.h).
// Raw pointers only, so nvcc compiles the kernels without LibTorch's headers. Each
// returns the launch error. Included only where CASCADE_WITH_CUDA_KERNELS is defined.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace cascade::stage::cuda {

constexpr int kMaxTokens = 8;  // the most tokens the decode kernels take

// LLM.int8 for T in [1, kMaxTokens] tokens; K % 16 == 0, 16-byte aligned rows, k_out <= 32.
cudaError_t int8_mixed(int T, const int8_t* xq, const float* sx, const float* xo, const int64_t* cols, int k_out,
                       const int8_t* q, const float* scale, float* y, int K, int N, cudaStream_t stream);
cudaError_t int8_weight_only(int T, const float* x, const int8_t* q, const float* scale, float* y, int K, int N,
                             cudaStream_t stream);

// dtype: 0 float32, 1 float16, 2 bfloat16.
cudaError_t fused_rms_norm(int dtype, const void* x, const void* w, void* y, int rows, int H, float eps,
                           cudaStream_t stream);
cudaError_t fused_rope(int dtype, const void* x, const void* cos, const void* sin, void* y, int tokens, int heads,
                       int dim, cudaStream_t stream);
// dtype 1 or 2; T in [1, kMaxTokens]; K % 8 == 0; rows 16-byte aligned; b may be null.
cudaError_t fused_gemv(int dtype, int T, const void* x, const void* w, const void* b, void* y, int K, int N,
                       cudaStream_t stream);

}  // namespace cascade::stage::cuda
