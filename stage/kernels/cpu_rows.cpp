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

// The rows' passes are functions of their own, not inlined, on restrict pointers:
// inlined into parallel_for's lambda GCC 12 vectorized none of these loops.

// The sum of squares of n values in kLanes interleaved partial sums, added pairwise at
// the end, so that it vectorizes (a single running sum is an ordered reduction, which
// the compiler keeps scalar).
constexpr int kLanes = 16;
template <typename S>
float sum_of_squares(const S* __restrict x, int64_t n) {
  float lane[kLanes] = {};
  const int64_t full = n - n % kLanes;
  for (int64_t i = 0; i < full; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += f(x[i + l]) * f(x[i + l]);
  for (int64_t i = full; i < n; ++i) lane[i - full] += f(x[i]) * f(x[i]);
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) lane[l] += lane[l + w];
  return lane[0];
}

template <typename S>
[[gnu::noinline]] void rms_norm_row(const S* __restrict x, const S* __restrict w, float eps, int64_t H,
                                    S* __restrict y) {
  const float inv = 1.f / std::sqrt(sum_of_squares(x, H) / static_cast<float>(H) + eps);
  for (int64_t i = 0; i < H; ++i) y[i] = cpu::to_storage<S>(f(w[i]) * round_to<S>(f(x[i]) * inv));
}

template <typename S>
void rms_norm_rows(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& y) {
  const int64_t rows = x.size(0), H = x.size(1);
  const S* xs = x.data_ptr<S>();
  const S* ws = w.data_ptr<S>();
  S* ys = y.data_ptr<S>();
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) rms_norm_row(xs + r * H, ws, static_cast<float>(eps), H, ys + r * H);
  });
}

// One head of one token: y = x * cos + rotate_half(x) * sin, each product rounded to S
// as ATen's ops round it. Two halves, so that neither loop branches.
template <typename S>
[[gnu::noinline]] void rope_row(const S* __restrict x, const S* __restrict c, const S* __restrict s, int64_t half,
                                S* __restrict y) {
  for (int64_t i = 0; i < half; ++i)
    y[i] = cpu::to_storage<S>(round_to<S>(f(x[i]) * f(c[i])) + round_to<S>(-f(x[i + half]) * f(s[i])));
  for (int64_t i = half; i < 2 * half; ++i)
    y[i] = cpu::to_storage<S>(round_to<S>(f(x[i]) * f(c[i])) + round_to<S>(f(x[i - half]) * f(s[i])));
}

template <typename S>
void rope_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& y) {
  const int64_t T = x.size(0), heads = x.size(1), D = x.size(2);
  const int64_t st = x.stride(0), sh = x.stride(1);
  const S* xs = x.data_ptr<S>();
  const S* cs = cos.data_ptr<S>();
  const S* sn = sin.data_ptr<S>();
  S* ys = y.data_ptr<S>();
  at::parallel_for(0, T * heads, grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r / heads, h = r % heads;
      rope_row(xs + t * st + h * sh, cs + t * D, sn + t * D, D / 2, ys + r * D);
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
