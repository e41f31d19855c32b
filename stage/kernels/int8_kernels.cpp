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
static_assert(kInt8KernelMaxTokens == cuda::kMaxTokens, "int8_kernels.h and cuda_kernels.h disagree");

namespace {

// Whether the kernels take this weight and this many tokens.
bool fits(const at::Tensor& x, const at::Tensor& q) {
  const int64_t T = x.size(0), K = q.size(1);
  return q.is_cuda() && T >= 1 && T <= kInt8KernelMaxTokens && K % 16 == 0 && q.is_contiguous() &&
         reinterpret_cast<uintptr_t>(q.data_ptr()) % 16 == 0 && K < (int64_t{1} << 30) &&
         q.size(0) < (int64_t{1} << 30);
}

}  // namespace

at::Tensor int8_gemv_mixed(const at::Tensor& xq, const at::Tensor& sx, const at::Tensor& xo, const at::Tensor& cols,
                           const at::Tensor& q, const at::Tensor& scale) {
  if (!fits(xq, q) || cols.numel() > 32) return {};
  const at::Tensor a = xq.contiguous(), s = sx.to(at::kFloat).contiguous(), o = xo.to(at::kFloat).contiguous(),
                   c = cols.contiguous(), sc = scale.to(at::kFloat).contiguous();
  const int T = static_cast<int>(a.size(0)), K = static_cast<int>(q.size(1)), N = static_cast<int>(q.size(0));
  at::Tensor y = at::empty({T, N}, q.options().dtype(at::kFloat));
  comm::cuda_check(
      cuda::int8_mixed(T, a.data_ptr<int8_t>(), s.data_ptr<float>(), o.data_ptr<float>(), c.data_ptr<int64_t>(),
                       static_cast<int>(c.numel()), q.data_ptr<int8_t>(), sc.data_ptr<float>(), y.data_ptr<float>(), K,
                       N, at::cuda::getCurrentCUDAStream().stream()),
      "the int8 mixed-decomposition kernel");
  return y;
}

bool int8_split_kernel(const at::Tensor& x, double threshold, int64_t slots, at::Tensor* xq, at::Tensor* sx,
                       at::Tensor* cols, at::Tensor* xo) {
  const at::ScalarType t = x.scalar_type();
  if (!x.is_cuda() || x.dim() != 2 || x.size(0) < 1 || x.size(0) > kInt8KernelMaxTokens || slots < 1 || slots > 32 ||
      x.size(1) < slots || x.size(1) >= (int64_t{1} << 30) || cuda_dtype_code(t) < 0)
    return false;
  const at::Tensor a = x.contiguous();
  const int T = static_cast<int>(a.size(0)), K = static_cast<int>(a.size(1));
  const at::TensorOptions f = a.options().dtype(at::kFloat);
  const at::Tensor colmax = at::empty({K}, f);
  at::Tensor q = at::empty({T, K}, a.options().dtype(at::kChar)), s = at::empty({T, 1}, f);
  at::Tensor c = at::empty({slots}, a.options().dtype(at::kLong)), o = at::empty({T, slots}, f);
  const int code = cuda_dtype_code(t);
  comm::cuda_check(
      cuda::int8_split(code, a.data_ptr(), T, K, static_cast<float>(threshold), static_cast<int>(slots),
                       colmax.data_ptr<float>(), q.data_ptr<int8_t>(), s.data_ptr<float>(), c.data_ptr<int64_t>(),
                       o.data_ptr<float>(), at::cuda::getCurrentCUDAStream().stream()),
      "the int8 split kernel");
  *xq = q;
  *sx = s;
  *cols = c;
  *xo = o;
  return true;
}
#else
// No CUDA kernels in this build: the ATen path everywhere.
bool int8_split_kernel(const at::Tensor&, double, int64_t, at::Tensor*, at::Tensor*, at::Tensor*, at::Tensor*) {
  return false;
}
at::Tensor int8_gemv_mixed(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&) {
  return {};
}
#endif

}  // namespace cascade::stage
