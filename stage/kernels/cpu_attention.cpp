#include "stage/kernels/cpu_attention.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "stage/kernels/cpu_gemv.h"

namespace cascade::stage {
namespace {

inline float widen(float x) { return x; }
inline float widen(c10::BFloat16 x) { return static_cast<float>(x); }
inline float widen(c10::Half x) { return static_cast<float>(x); }

// One query head's result from its raw scores q.k for keys [lo, len) (score[j - lo]):
// scaled, soft-capped, ALiBi added, softmax, then the weighted sum of the values vh
// [len, d] in float32 (acc, d floats), rounded once into out.
template <typename T>
void softmax_values(float* score, int64_t lo, int64_t len, const T* vh, int64_t d, const CpuAttention& a, float slope,
                    float* acc, T* out) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t j = lo; j < len; ++j) {
    float s = score[j - lo] * static_cast<float>(a.scale);
    if (a.softcap > 0) s = static_cast<float>(a.softcap * std::tanh(s / a.softcap));
    if (slope != 0) s += slope * static_cast<float>(j);
    score[j - lo] = s;
    best = std::max(best, s);
  }
  std::fill(acc, acc + d, 0.f);
  float total = 0.f;
  for (int64_t j = lo; j < len; ++j) {
    const float p = std::exp(score[j - lo] - best);
    total += p;
    const T* vj = vh + j * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) acc[i] += p * widen(vj[i]);
  }
  for (int64_t i = 0; i < d; ++i) out[i] = static_cast<T>(acc[i] / total);
}

// The first key query position `last` sees: all, or the last `window` up to it.
int64_t first_key(int64_t last, int64_t window) { return window > 0 ? std::max<int64_t>(0, last + 1 - window) : 0; }

// ALiBi slopes as float32, or undefined.
at::Tensor slopes_of(const CpuAttention& a) {
  return a.alibi.defined() ? a.alibi.to(at::kFloat).contiguous() : a.alibi;
}

// Heads [h0, h1): one pass over the keys for the scores, one over the values.
template <typename T>
void heads_range(const T* q, const T* k, const T* v, T* out, int64_t h0, int64_t h1, int64_t group, int64_t d,
                 int64_t max_len, int64_t lo, int64_t len, const CpuAttention& a, const float* slopes) {
  std::vector<float> qf(static_cast<size_t>(d)), score(static_cast<size_t>(len - lo)), acc(static_cast<size_t>(d));
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t kvh = h / group;
    const T* qh = q + h * d;
    for (int64_t i = 0; i < d; ++i) qf[i] = widen(qh[i]);
    const T* kh = k + kvh * max_len * d;
    for (int64_t j = lo; j < len; ++j) {
      const T* kj = kh + j * d;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < d; ++i) s += qf[i] * widen(kj[i]);
      score[j - lo] = s;
    }
    softmax_values(score.data(), lo, len, v + kvh * max_len * d, d, a, slopes ? slopes[h] : 0.f, acc.data(),
                   out + h * d);
  }
}

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t len, const CpuAttention& a,
         at::Tensor& out) {
  const int64_t heads = q.size(0), d = q.size(1), kv_heads = k.size(0), max_len = k.size(1);
  const int64_t lo = first_key(len - 1, a.window);
  const at::Tensor slopes = slopes_of(a);
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

// Queries a scores call takes: the keys past a block's last query are computed and not
// used, so a block of kQueryBlock queries wastes at most about kQueryBlock^2 / 2 of a
// causal prompt's n^2 / 2 dot products.
constexpr int64_t kQueryBlock = 64;

// A prompt's heads: per head and block of queries, the block's scores against the keys
// any of them sees in one cpu_linear_sums call, then each query's softmax and values.
template <typename T>
void run_prompt(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start, const CpuAttention& a,
                at::Tensor& out) {
  const int64_t n = q.size(0), heads = q.size(1), d = q.size(2), group = heads / k.size(0);
  const at::Tensor slopes = slopes_of(a);
  T* op = out.data_ptr<T>();
  const int64_t per_head = 4 * n * (start + (n + 1) / 2) * d;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(per_head, 1));
  at::parallel_for(0, heads, grain, [&](int64_t h0, int64_t h1) {
    std::vector<float> acc(static_cast<size_t>(d));
    for (int64_t h = h0; h < h1; ++h) {
      const T* vh = v[h / group].data_ptr<T>();
      const float slope = slopes.defined() ? slopes.data_ptr<float>()[h] : 0.f;
      for (int64_t t0 = 0; t0 < n; t0 += kQueryBlock) {
        const int64_t t1 = std::min(n, t0 + kQueryBlock);
        const int64_t klo = first_key(start + t0, a.window), khi = start + t1;  // keys [klo, khi)
        const at::Tensor keys = k[h / group].narrow(0, klo, khi - klo);         // [khi - klo, d], contiguous
        const at::Tensor scores =
            cpu_linear_sums(q.select(1, h).narrow(0, t0, t1 - t0), keys).contiguous();  // [t1 - t0, khi - klo]
        float* sc = scores.data_ptr<float>();
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t lo = first_key(start + t, a.window);
          float* row = sc + (t - t0) * (khi - klo) + (lo - klo);
          softmax_values(row, lo, start + t + 1, vh, d, a, slope, acc.data(), op + (t * heads + h) * d);
        }
      }
    }
  });
}

// Whether q's heads, k, v and out hold together as the header says, q [.., heads, d].
bool shapes_hold(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t len, const at::Tensor& out) {
  const auto st = q.scalar_type();
  const int64_t heads = q.size(-2), d = q.size(-1);
  if (!q.device().is_cpu() || k.dim() != 3 || v.sizes() != k.sizes() || out.sizes() != q.sizes()) return false;
  if (k.scalar_type() != st || v.scalar_type() != st || out.scalar_type() != st) return false;
  if (!k.is_contiguous() || !v.is_contiguous() || !out.is_contiguous()) return false;
  return k.size(2) == d && k.size(0) > 0 && heads % k.size(0) == 0 && len >= 1 && len <= k.size(1);
}

// f(T{}) for T the storage type of `st`; false for other dtypes.
template <class F>
bool with_type(at::ScalarType st, const F& f) {
  switch (st) {
    case at::kFloat:
      f(float{});
      return true;
    case at::kBFloat16:
      f(c10::BFloat16{});
      return true;
    case at::kHalf:
      f(c10::Half{});
      return true;
    default:
      return false;
  }
}

}  // namespace

bool cpu_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t len,
                          const CpuAttention& args, at::Tensor& out) {
  if (q.dim() != 2 || !q.is_contiguous() || !shapes_hold(q, k, v, len, out)) return false;
  if (args.alibi.defined() && args.alibi.numel() != q.size(0)) return false;
  return with_type(q.scalar_type(), [&](auto t) { run<decltype(t)>(q, k, v, len, args, out); });
}

bool cpu_prompt_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start,
                          const CpuAttention& args, at::Tensor& out) {
  if (q.dim() != 3 || q.size(0) < 1 || q.stride(2) != 1 || start < 0 || !shapes_hold(q, k, v, start + q.size(0), out))
    return false;
  if (args.alibi.defined() && args.alibi.numel() != q.size(1)) return false;
  return with_type(q.scalar_type(), [&](auto t) { run_prompt<decltype(t)>(q, k, v, start, args, out); });
}

}  // namespace cascade::stage
