#include "stage/kernels/int8_kernels.h"

#ifdef CASCADE_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>

#include "comm/cuda_check.h"
#include "stage/kernels/cuda_dtype.h"
#include "stage/kernels/cuda_kernels.h"
#endif

namespace cascade::stage {

#ifdef CASCADE_WITH_CUDA_KERNELS
static_assert(kInt8SplitMaxTokens == cuda::kSplitMaxTokens && kInt8SplitList == cuda::kSplitList &&
                  kInt8SplitRow == cuda::kSplitRow,
              "int8_kernels.h and cuda_kernels.h disagree");

bool int8_split_kernel(const at::Tensor& x, double threshold, int64_t slots, at::Tensor* ints, at::Tensor* sx) {
  const at::ScalarType t = x.scalar_type();
  if (!x.is_cuda() || x.dim() != 2 || x.size(0) < 1 || x.size(0) > kInt8SplitMaxTokens || !(threshold > 0) ||
      slots < 1 || slots > kInt8SplitList || x.size(1) < 1 || x.size(1) >= (int64_t{1} << 30) || cuda_dtype_code(t) < 0)
    return false;
  const at::Tensor a = x.contiguous();
  const int64_t per_vector = 16 / static_cast<int64_t>(a.element_size());  // the kernel's loads
  if (a.size(1) % per_vector != 0 || a.size(1) / per_vector > 8 * 1024 ||
      reinterpret_cast<uintptr_t>(a.data_ptr()) % 16 != 0)
    return false;
  const int T = static_cast<int>(a.size(0)), K = static_cast<int>(a.size(1));
  at::Tensor q = at::empty({T, K}, a.options()), s = at::empty({T, kInt8SplitRow}, a.options().dtype(at::kFloat));
  comm::cuda_check(
      cuda::int8_split(cuda_dtype_code(t), a.data_ptr(), T, K, static_cast<float>(threshold), static_cast<int>(slots),
                       q.data_ptr(), s.data_ptr<float>(), at::cuda::getCurrentCUDAStream().stream()),
      "the int8 split kernel");
  *ints = q;
  *sx = s;
  return true;
}
#else
// No CUDA kernels in this build: the ATen split everywhere.
bool int8_split_kernel(const at::Tensor&, double, int64_t, at::Tensor*, at::Tensor*) { return false; }
#endif

}  // namespace cascade::stage
