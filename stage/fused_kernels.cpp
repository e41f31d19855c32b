#include "stage/fused_kernels.h"

#ifdef CASCADE_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>

#include "comm/cuda_check.h"

namespace cascade::stage::cuda {
cudaError_t fused_rms_norm(int dtype, const void* x, const void* w, void* y, int rows, int H, float eps,
                           cudaStream_t stream);
cudaError_t fused_rope(int dtype, const void* x, const void* cos, const void* sin, void* y, int tokens, int heads,
                       int dim, cudaStream_t stream);
}  // namespace cascade::stage::cuda
#endif

namespace cascade::stage {

#ifdef CASCADE_WITH_CUDA_KERNELS
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return 0;
    case at::kHalf:
      return 1;
    case at::kBFloat16:
      return 2;
    default:
      return -1;
  }
}

}  // namespace

at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const int code = dtype_code(x.scalar_type());
  if (!x.is_cuda() || code < 0 || x.dim() != 2 || w.scalar_type() != x.scalar_type() || w.numel() != x.size(1))
    return {};
  const at::Tensor a = x.contiguous(), b = w.contiguous();
  at::Tensor y = at::empty_like(a);
  comm::cuda_check(cuda::fused_rms_norm(code, a.data_ptr(), b.data_ptr(), y.data_ptr(), static_cast<int>(a.size(0)),
                                        static_cast<int>(a.size(1)), static_cast<float>(eps),
                                        at::cuda::getCurrentCUDAStream().stream()),
                   "the RMSNorm kernel");
  return y;
}

at::Tensor fused_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int code = dtype_code(x.scalar_type());
  if (!x.is_cuda() || code < 0 || x.dim() != 3 || x.size(2) % 2 != 0 || cos.scalar_type() != x.scalar_type() ||
      sin.scalar_type() != x.scalar_type() || cos.sizes() != at::IntArrayRef({x.size(0), x.size(2)}) ||
      sin.sizes() != cos.sizes())
    return {};
  const at::Tensor a = x.contiguous(), c = cos.contiguous(), s = sin.contiguous();
  at::Tensor y = at::empty_like(a);
  comm::cuda_check(cuda::fused_rope(code, a.data_ptr(), c.data_ptr(), s.data_ptr(), y.data_ptr(),
                                    static_cast<int>(a.size(0)), static_cast<int>(a.size(1)),
                                    static_cast<int>(a.size(2)), at::cuda::getCurrentCUDAStream().stream()),
                   "the RoPE kernel");
  return y;
}
#else
// No CUDA kernels in this build: the ATen path everywhere.
at::Tensor fused_rms_norm(const at::Tensor&, const at::Tensor&, double) { return {}; }
at::Tensor fused_rope(const at::Tensor&, const at::Tensor&, const at::Tensor&) { return {}; }
#endif

}  // namespace cascade::stage
