#include "stage/kernels/cpu_rows.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "stage/kernels/cpu/storage.h"

namespace cascade::stage {
namespace {

using cpu::float_type;
using cpu::for_type;
using cpu::round_to;

// A value of S as float.
template <typename S>
float f(S v) {
  return static_cast<float>(v);
}

// Rows per task: enough elements that waking a thread pays.
int64_t grain(int64_t row_elems) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, row_elems)); }

template <typename S>
void rms_norm_rows(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& y) {
  const int64_t rows = x.size(0), H = x.size(1);
  const S* xs = x.data_ptr<S>();
  const S* ws = w.data_ptr<S>();
  S* ys = y.data_ptr<S>();
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const S* xr = xs + r * H;
      S* yr = ys + r * H;
      float ss = 0.f;
      for (int64_t i = 0; i < H; ++i) ss += f(xr[i]) * f(xr[i]);
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(H) + static_cast<float>(eps));
      for (int64_t i = 0; i < H; ++i) yr[i] = S(f(ws[i]) * round_to<S>(f(xr[i]) * inv));
    }
  });
}

template <typename S>
void rope_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& y) {
  const int64_t T = x.size(0), heads = x.size(1), D = x.size(2), half = D / 2;
  const int64_t st = x.stride(0), sh = x.stride(1);
  const S* xs = x.data_ptr<S>();
  const S* cs = cos.data_ptr<S>();
  const S* sn = sin.data_ptr<S>();
  S* ys = y.data_ptr<S>();
  at::parallel_for(0, T * heads, grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r / heads, h = r % heads;
      const S* xr = xs + t * st + h * sh;
      const S* c = cs + t * D;
      const S* s = sn + t * D;
      S* yr = ys + r * D;
      for (int64_t i = 0; i < D; ++i) {
        const float rot = i < half ? -f(xr[i + half]) : f(xr[i - half]);
        yr[i] = S(round_to<S>(f(xr[i]) * f(c[i])) + round_to<S>(rot * f(s[i])));
      }
    }
  });
}

}  // namespace

at::Tensor cpu_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  if (!x.device().is_cpu() || !w.device().is_cpu() || x.dim() != 2 || w.dim() != 1 || w.size(0) != x.size(1) ||
      !float_type(x.scalar_type()) || w.scalar_type() != x.scalar_type() || !x.is_contiguous() || !w.is_contiguous())
    return {};
  at::Tensor y = at::empty_like(x);
  for_type(x.scalar_type(), [&](auto s) { rms_norm_rows<decltype(s)>(x, w, eps, y); });
  return y;
}

at::Tensor cpu_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (!x.device().is_cpu() || x.dim() != 3 || x.stride(2) != 1 || x.size(2) % 2 != 0 || !float_type(x.scalar_type()) ||
      cos.dim() != 2 || cos.sizes() != sin.sizes() || cos.size(0) != x.size(0) || cos.size(1) != x.size(2) ||
      !cos.device().is_cpu() || !sin.device().is_cpu())
    return {};
  const at::Tensor c = cos.to(x.scalar_type()).contiguous(), sn = sin.to(x.scalar_type()).contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  for_type(x.scalar_type(), [&](auto s) { rope_rows<decltype(s)>(x, c, sn, y); });
  return y;
}

}  // namespace cascade::stage
