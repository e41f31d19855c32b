#include "stage/kernels/fused_kernels.h"

#ifdef CASCADE_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>
#include <cstdlib>

#include "comm/cuda_check.h"
#include "stage/kernels/cuda_dtype.h"
#include "stage/kernels/cuda_kernels.h"
#endif

namespace cascade::stage {

#ifdef CASCADE_WITH_CUDA_KERNELS
bool aligned(const at::Tensor& t) { return t.is_contiguous() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

namespace {

// sx: LLM.int8's split (x its ints [T, K]) or undefined.
cuda::GemvArgs gemv_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, int64_t N,
                         const at::Tensor& sx = {}) {
  cuda::GemvArgs g;
  g.dtype = cuda_dtype_code(x.scalar_type());
  g.int8 = scale.defined();
  g.T = static_cast<int>(x.size(0));
  g.sx = sx.defined() ? sx.data_ptr<float>() : nullptr;
  g.K = static_cast<int>(x.size(1));
  g.N = static_cast<int>(N);
  g.x = x.data_ptr();
  g.w = w.data_ptr();
  g.scale = g.int8 ? scale.data_ptr<float>() : nullptr;
  return g;
}

// Whether the decode kernels take x [tokens, in] against w [rows, in] (and b): w in x's
// 16-bit dtype, or int8 rows with `scale` [rows] (x also float32); with sx, x is ints.
bool gemv_applies(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& scale,
                  const at::Tensor& sx = {}) {
  const bool int8 = scale.defined();
  const int code = cuda_dtype_code(x.scalar_type());
  if (!x.is_cuda() || code < 0 || x.dim() != 2 || x.size(0) < 1 || w.dim() != 2 || w.size(1) != x.size(1) ||
      !aligned(w) || w.size(0) >= (int64_t{1} << 30) || x.size(1) >= (int64_t{1} << 30))
    return false;
  if (sx.defined() && (!int8 || sx.scalar_type() != at::kFloat || !sx.is_cuda() || !sx.is_contiguous() ||
                       sx.dim() != 2 || sx.size(0) != x.size(0) || sx.size(1) != cuda::kSplitRow))
    return false;
  if (b.defined() && (b.scalar_type() != x.scalar_type() || !b.is_contiguous() || b.numel() != w.size(0))) return false;
  const bool types = int8 ? w.scalar_type() == at::kChar && x.size(1) % 16 == 0 && scale.scalar_type() == at::kFloat &&
                                scale.is_cuda() && scale.is_contiguous() && scale.numel() == w.size(0)
                          : code >= 1 && w.scalar_type() == x.scalar_type() && x.size(1) % 8 == 0;
  const cuda::GemvArgs g = gemv_args(x, w, scale, w.size(0), sx);
  return types && g.T <= cuda::gemv_max_tokens(g);
}

}  // namespace

at::Tensor fused_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& scale,
                        const at::Tensor& sx) {
  return fused_linear_add(x, w, b, {}, scale, sx);
}

at::Tensor fused_linear_add(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r,
                            const at::Tensor& scale, const at::Tensor& sx) {
  if (!gemv_applies(x, w, b, scale, sx)) return {};
  const int64_t T = x.size(0);
  if (r.defined() && (x.scalar_type() == at::kFloat || r.scalar_type() != x.scalar_type() ||
                      r.sizes() != at::IntArrayRef({T, w.size(0)})))
    return {};
  const at::Tensor a = aligned(x) ? x : x.clone(at::MemoryFormat::Contiguous);
  const at::Tensor rc = r.defined() ? r.contiguous() : r;
  at::Tensor y = at::empty({T, w.size(0)}, a.options());
  cuda::GemvArgs g = gemv_args(a, w, scale, w.size(0), sx);
  g.b = b.defined() ? b.data_ptr() : nullptr;
  g.r = rc.defined() ? rc.data_ptr() : nullptr;
  g.y = y.data_ptr();
  comm::cuda_check(cuda::fused_gemv(g, at::cuda::getCurrentCUDAStream().stream()), "the decode GEMV kernel");
  return y;
}

at::Tensor fused_gated_linear(const at::Tensor& x, const at::Tensor& w, int act, const at::Tensor& scale,
                              const at::Tensor& sx) {
  if (!gemv_applies(x, w, {}, scale, sx) || w.size(0) % 2 != 0 || x.scalar_type() == at::kFloat) return {};
  const at::Tensor a = aligned(x) ? x : x.clone(at::MemoryFormat::Contiguous);
  const int64_t I = w.size(0) / 2;
  at::Tensor y = at::empty({a.size(0), I}, a.options());
  cuda::GemvArgs g = gemv_args(a, w, scale, I, sx);
  g.y = y.data_ptr();
  g.act = act;
  comm::cuda_check(cuda::fused_gemv_gated(g, at::cuda::getCurrentCUDAStream().stream()), "the gated GEMV kernel");
  return y;
}

at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const int code = cuda_dtype_code(x.scalar_type());
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

at::Tensor fused_gated_act(const at::Tensor& gu, int act) {
  const int code = cuda_dtype_code(gu.scalar_type());
  if (!gu.is_cuda() || code < 0 || gu.dim() != 2 || gu.size(1) % 2 != 0 || !gu.is_contiguous()) return {};
  const int64_t I = gu.size(1) / 2;
  at::Tensor y = at::empty({gu.size(0), I}, gu.options());
  comm::cuda_check(cuda::fused_gated_act(code, gu.data_ptr(), y.data_ptr(), gu.size(0), static_cast<int>(I), act,
                                         at::cuda::getCurrentCUDAStream().stream()),
                   "the gated activation kernel");
  return y;
}

at::Tensor fused_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int code = cuda_dtype_code(x.scalar_type());
  if (!x.is_cuda() || code < 0 || x.dim() != 3 || x.size(2) % 2 != 0 || cos.scalar_type() != x.scalar_type() ||
      sin.scalar_type() != x.scalar_type() || cos.sizes() != at::IntArrayRef({x.size(0), x.size(2)}) ||
      sin.sizes() != cos.sizes())
    return {};
  // Rows may be strided (q or k read in place from a fused q/k/v output); heads packed.
  const bool rows_ok = x.stride(2) == 1 && x.stride(1) == x.size(2);
  const at::Tensor a = rows_ok ? x : x.contiguous(), c = cos.contiguous(), s = sin.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  comm::cuda_check(cuda::fused_rope(code, a.data_ptr(), a.stride(0), c.data_ptr(), s.data_ptr(), y.data_ptr(),
                                    static_cast<int>(a.size(0)), static_cast<int>(a.size(1)),
                                    static_cast<int>(a.size(2)), at::cuda::getCurrentCUDAStream().stream()),
                   "the RoPE kernel");
  return y;
}
#else
// No CUDA kernels in this build: the ATen path everywhere.
at::Tensor fused_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  return {};
}
at::Tensor fused_linear_add(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&) {
  return {};
}
at::Tensor fused_gated_linear(const at::Tensor&, const at::Tensor&, int, const at::Tensor&, const at::Tensor&) {
  return {};
}
at::Tensor fused_rms_norm(const at::Tensor&, const at::Tensor&, double) { return {}; }
at::Tensor fused_gated_act(const at::Tensor&, int) { return {}; }
at::Tensor fused_rope(const at::Tensor&, const at::Tensor&, const at::Tensor&) { return {}; }
#endif

}  // namespace cascade::stage
