#include "stage/kernels/fused_kernels.h"

#ifdef CASCADE_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>

#include "comm/cuda_check.h"
#include "stage/kernels/cuda_kernels.h"
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

bool aligned(const at::Tensor& t) { return t.is_contiguous() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

namespace {

// Whether the decode GEMV kernels take x [tokens, in] against w [rows, in] (and b).
bool gemv_applies(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return x.is_cuda() && dtype_code(x.scalar_type()) >= 1 && x.dim() == 2 && x.size(0) >= 1 &&
         x.size(0) <= cuda::kMaxTokens && w.dim() == 2 && w.scalar_type() == x.scalar_type() &&
         w.size(1) == x.size(1) && x.size(1) % 8 == 0 && aligned(w) && w.size(0) < (int64_t{1} << 30) &&
         (!b.defined() || (b.scalar_type() == x.scalar_type() && b.is_contiguous()));
}

}  // namespace

at::Tensor fused_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return fused_linear_add(x, w, b, {});
}

at::Tensor fused_linear_add(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r) {
  if (!gemv_applies(x, w, b)) return {};
  if (r.defined() && (r.scalar_type() != x.scalar_type() || r.sizes() != at::IntArrayRef({x.size(0), w.size(0)})))
    return {};
  const at::Tensor a = aligned(x) ? x : x.clone(at::MemoryFormat::Contiguous);
  const at::Tensor rc = r.defined() ? r.contiguous() : r;
  at::Tensor y = at::empty({a.size(0), w.size(0)}, a.options());
  const int T = static_cast<int>(a.size(0)), K = static_cast<int>(a.size(1)), N = static_cast<int>(w.size(0));
  const void* bias = b.defined() ? b.data_ptr() : nullptr;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const int code = dtype_code(x.scalar_type());
  comm::cuda_check(
      rc.defined()
          ? cuda::fused_gemv_add(code, T, a.data_ptr(), w.data_ptr(), bias, rc.data_ptr(), y.data_ptr(), K, N, stream)
          : cuda::fused_gemv(code, T, a.data_ptr(), w.data_ptr(), bias, y.data_ptr(), K, N, stream),
      "the decode GEMV kernel");
  return y;
}

at::Tensor fused_gated_linear(const at::Tensor& x, const at::Tensor& w, int act) {
  if (!gemv_applies(x, w, {}) || w.size(0) % 2 != 0) return {};
  const at::Tensor a = aligned(x) ? x : x.clone(at::MemoryFormat::Contiguous);
  const int64_t I = w.size(0) / 2;
  at::Tensor y = at::empty({a.size(0), I}, a.options());
  comm::cuda_check(cuda::fused_gemv_gated(dtype_code(x.scalar_type()), static_cast<int>(a.size(0)), a.data_ptr(),
                                          w.data_ptr(), act, y.data_ptr(), static_cast<int>(a.size(1)),
                                          static_cast<int>(I), at::cuda::getCurrentCUDAStream().stream()),
                   "the gated GEMV kernel");
  return y;
}

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
at::Tensor fused_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&) { return {}; }
at::Tensor fused_linear_add(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { return {}; }
at::Tensor fused_gated_linear(const at::Tensor&, const at::Tensor&, int) { return {}; }
at::Tensor fused_rms_norm(const at::Tensor&, const at::Tensor&, double) { return {}; }
at::Tensor fused_rope(const at::Tensor&, const at::Tensor&, const at::Tensor&) { return {}; }
#endif

}  // namespace cascade::stage
