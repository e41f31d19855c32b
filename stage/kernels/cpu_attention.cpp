#include "stage/kernels/cpu_attention.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace cascade::stage {
namespace {

inline float widen(float x) { return x; }
inline float widen(c10::BFloat16 x) { return static_cast<float>(x); }
inline float widen(c10::Half x) { return static_cast<float>(x); }

// Heads [h0, h1): one pass over the keys for the scores, one over the values.
template <typename T>
void heads_range(const T* q, const T* k, const T* v, T* out, int64_t h0, int64_t h1, int64_t group, int64_t d,
                 int64_t max_len, int64_t lo, int64_t len, const CpuDecodeAttention& a, const float* slopes) {
  std::vector<float> qf(static_cast<size_t>(d)), score(static_cast<size_t>(len - lo)), acc(static_cast<size_t>(d));
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t kvh = h / group;
    const T* qh = q + h * d;
    for (int64_t i = 0; i < d; ++i) qf[i] = widen(qh[i]);
    const T* kh = k + kvh * max_len * d;
    const T* vh = v + kvh * max_len * d;
    float best = -std::numeric_limits<float>::infinity();
    for (int64_t j = lo; j < len; ++j) {
      const T* kj = kh + j * d;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < d; ++i) s += qf[i] * widen(kj[i]);
      s *= static_cast<float>(a.scale);
      if (a.softcap > 0) s = static_cast<float>(a.softcap * std::tanh(s / a.softcap));
      if (slopes) s += slopes[h] * static_cast<float>(j);
      score[j - lo] = s;
      best = std::max(best, s);
    }
    std::fill(acc.begin(), acc.end(), 0.f);
    float total = 0.f;
    for (int64_t j = lo; j < len; ++j) {
      const float p = std::exp(score[j - lo] - best);
      total += p;
      const T* vj = vh + j * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) acc[i] += p * widen(vj[i]);
    }
    T* oh = out + h * d;
    for (int64_t i = 0; i < d; ++i) oh[i] = static_cast<T>(acc[i] / total);
  }
}

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t len, const CpuDecodeAttention& a,
         at::Tensor& out) {
  const int64_t heads = q.size(0), d = q.size(1), kv_heads = k.size(0), max_len = k.size(1);
  const int64_t lo = a.window > 0 ? std::max<int64_t>(0, len - a.window) : 0;
  const at::Tensor slopes = a.alibi.defined() ? a.alibi.to(at::kFloat).contiguous() : at::Tensor();
  const float* sl = slopes.defined() ? slopes.data_ptr<float>() : nullptr;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  // Threads only where a head's work outweighs waking them (a small model's decode
  // attention is a few microseconds).
  const int64_t per_head = 2 * (len - lo) * d;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(per_head, 1));
  at::parallel_for(0, heads, grain, [&](int64_t h0, int64_t h1) {
    heads_range<T>(qp, kp, vp, op, h0, h1, heads / kv_heads, d, max_len, lo, len, a, sl);
  });
}

}  // namespace

bool cpu_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t len,
                          const CpuDecodeAttention& args, at::Tensor& out) {
  const auto st = q.scalar_type();
  if (!q.device().is_cpu() || q.dim() != 2 || k.dim() != 3 || v.sizes() != k.sizes() || out.sizes() != q.sizes())
    return false;
  if (k.scalar_type() != st || v.scalar_type() != st || out.scalar_type() != st) return false;
  if (!q.is_contiguous() || !k.is_contiguous() || !v.is_contiguous() || !out.is_contiguous()) return false;
  if (k.size(2) != q.size(1) || k.size(0) == 0 || q.size(0) % k.size(0) != 0 || len < 1 || len > k.size(1))
    return false;
  if (args.alibi.defined() && args.alibi.numel() != q.size(0)) return false;
  switch (st) {
    case at::kFloat:
      run<float>(q, k, v, len, args, out);
      return true;
    case at::kBFloat16:
      run<c10::BFloat16>(q, k, v, len, args, out);
      return true;
    case at::kHalf:
      run<c10::Half>(q, k, v, len, args, out);
      return true;
    default:
      return false;
  }
}

}  // namespace cascade::stage
