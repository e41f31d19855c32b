#include "stage/kernels/cpu_gemv.h"

#include <ATen/Parallel.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include "config/env.h"
#include "stage/kernels/cpu/isa.h"
#include "stage/kernels/cpu/storage.h"

namespace cascade::stage {
namespace {

using cpu::Backend;
using cpu::kBlockRows;
using cpu::WeightType;

std::vector<const Backend*> runnable() {
  std::vector<const Backend*> out;
#if defined(__x86_64__) && defined(CASCADE_CPU_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    if (__builtin_cpu_supports("avx512bf16")) out.push_back(&cpu::avx512bf16_backend());
    out.push_back(&cpu::avx512_backend());
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    out.push_back(&cpu::avx2_backend());
#endif
  out.push_back(&cpu::generic_backend());
  return out;
}

const Backend* find(const std::string& name) {
  for (const Backend* b : runnable())
    if (name == b->name) return b;
  return nullptr;
}

// The best runnable back end, or CASCADE_CPU_ISA's when this CPU can run it.
const Backend* initial() {
  const char* env = std::getenv("CASCADE_CPU_ISA");
  const Backend* b = env != nullptr ? find(env) : nullptr;
  return b != nullptr ? b : runnable().front();
}

std::atomic<const Backend*>& current() {
  static std::atomic<const Backend*> b{initial()};
  return b;
}

// CPUID.(7,0):EDX, where the AMX bits are; 0 where the CPU lacks that leaf.
unsigned cpuid7_edx() {
#if defined(__x86_64__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 ? d : 0u;
#else
  return 0;
#endif
}

// Whether Backend::dot_bf16 takes bfloat16 tokens against bfloat16 weights (else the
// pairs kernel on tokens widened to float32). Measured on two CPUs with AVX-512-BF16
// (docs/performance.md, session 26): on AMD's Zen 5 the bfloat16 dot product is the
// faster at every token count; on the H200 host's Intel Xeon (AMX-BF16, like every
// Intel core with AVX-512-BF16 since Sapphire Rapids) it is 3-7% faster at one token and
// 1.15-1.5x slower from 16. So not where the CPU has AMX-BF16 (CPUID.(7,0):EDX bit 22).
// One kernel for every call, whatever its token count, so that a token's bits do not
// depend on its batch or its prompt's chunks; a rule of the CPU, not a timing, so that
// every process on a host computes the same bits. CASCADE_CPU_BF16_DOT=0 or 1 overrides.
bool use_bf16_dot() {
  static const bool use = config::env_flag("CASCADE_CPU_BF16_DOT", (cpuid7_edx() >> 22 & 1u) == 0);
  return use;
}

bool weight_type(at::ScalarType t, WeightType* out) {
  switch (t) {
    case at::kFloat:
      *out = WeightType::kF32;
      return true;
    case at::kBFloat16:
      *out = WeightType::kBF16;
      return true;
    case at::kHalf:
      *out = WeightType::kF16;
      return true;
    case at::kChar:
      *out = WeightType::kI8;
      return true;
    default:
      return false;
  }
}

using cpu::float_type;

// Whether x [T, K] and w [rows, K] suit the kernels.
bool applies(const at::Tensor& x, const at::Tensor& w) {
  WeightType wt;
  return x.device().is_cpu() && w.device().is_cpu() && x.dim() == 2 && w.dim() == 2 && x.size(0) >= 1 &&
         float_type(x.scalar_type()) && weight_type(w.scalar_type(), &wt) && w.size(1) == x.size(1) &&
         w.is_contiguous() && w.size(0) >= 1;
}

// x [T, K] with each block of 2 * p columns reordered: its even columns, then its odd
// ones (isa.h, Backend::pair_width); the columns after the last whole block as they are.
at::Tensor evens_first(const at::Tensor& x, int p) {
  const int64_t T = x.size(0), K = x.size(1), full = K - K % (2 * p);
  if (full == 0) return x;
  at::Tensor out = x.clone();
  out.narrow(1, 0, full)
      .view({T, full / (2 * p), 2, p})
      .copy_(x.narrow(1, 0, full).view({T, full / (2 * p), p, 2}).transpose(2, 3));
  return out;
}

// One weight, read block by block: the float sums of rows [n0, n0 + rows) for every
// token into acc [T, kBlockRows]. bfloat16 tokens against bfloat16 weights go to the
// back end's bfloat16 dot product where it has one, as they are; otherwise the tokens
// are widened to float32 once here.
struct Sums {
  cpu::DotBlock dot;
  at::Tensor x;  // [T, K] contiguous: bfloat16 for dot_bf16, else float32 (pairs reordered where the kernel wants)
  const char* w;
  int64_t K;
  size_t elem;

  Sums(const at::Tensor& in, const at::Tensor& weight) {
    WeightType wt = WeightType::kF32;
    weight_type(weight.scalar_type(), &wt);
    const Backend* be = current().load();
    if (wt == WeightType::kBF16 && in.scalar_type() == at::kBFloat16 && be->dot_bf16 != nullptr && use_bf16_dot()) {
      dot = be->dot_bf16;
      x = in.contiguous();
    } else {
      dot = be->dot[static_cast<int>(wt)];
      x = in.to(at::kFloat).contiguous();
      if (wt == WeightType::kBF16 && be->pair_width > 0) x = evens_first(x, be->pair_width);
    }
    w = static_cast<const char*>(weight.data_ptr());
    K = weight.size(1);
    elem = weight.element_size();
  }
  // Another weight of the same type and in-features against the same prepared tokens.
  Sums(const Sums& tokens, const at::Tensor& weight)
      : dot(tokens.dot),
        x(tokens.x),
        w(static_cast<const char*>(weight.data_ptr())),
        K(weight.size(1)),
        elem(weight.element_size()) {}
  int tokens() const { return static_cast<int>(x.size(0)); }
  // acc [t * kBlockRows + i] = the sum of row n0 + i against token t0 + t, t < T <= kMaxTokens.
  void operator()(int64_t n0, int rows, int t0, int T, float* acc) const {
    const bool bf16 = x.scalar_type() == at::kBFloat16;
    cpu::DotArgs a{bf16 ? nullptr : x.data_ptr<float>() + t0 * K,
                   K,
                   T,
                   w + static_cast<size_t>(n0 * K) * elem,
                   K,
                   rows,
                   K,
                   acc,
                   kBlockRows};
    if (bf16) a.xb = static_cast<const uint16_t*>(x.data_ptr()) + t0 * K;
    dot(a);
  }
};

// f(n0, rows, acc) for every block of kBlockRows of [0, N), blocks split over threads
// in tasks of at least kTaskBytes of weight: a small weight stays on the calling thread,
// where waking the others (and their spinning after) would cost more than it saves.
constexpr int64_t kTaskBytes = int64_t{512} << 10;
template <class F>
void for_blocks(int64_t N, int64_t row_bytes, const F& f) {
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  const int64_t grain = std::max<int64_t>(1, kTaskBytes / std::max<int64_t>(1, kBlockRows * row_bytes));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    float acc[cpu::kMaxTokens * kBlockRows];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kBlockRows;
      f(n0, static_cast<int>(std::min<int64_t>(kBlockRows, N - n0)), acc);
    }
  });
}

// The activations cpu_gated_linear takes (cpu_gemv.h), one type each so that a row's
// loop holds no switch.
struct Silu {
  static float apply(float g) { return g / (1.0f + std::exp(-g)); }
};
struct Relu {
  static float apply(float g) { return g > 0 ? g : 0.0f; }
};
struct GeluErf {
  static float apply(float g) { return 0.5f * g * (1.0f + std::erf(g * static_cast<float>(M_SQRT1_2))); }
};
struct GeluTanh {
  static float apply(float g) {
    const float c = std::sqrt(2.0f / static_cast<float>(M_PI));
    return 0.5f * g * (1.0f + std::tanh(c * (g + 0.044715f * g * g * g)));
  }
};

template <class F>
void for_activation(int act, const F& f) {
  switch (act) {
    case 0:
      return f(Silu{});
    case 1:
      return f(Relu{});
    case 2:
      return f(GeluErf{});
    default:
      return f(GeluTanh{});
  }
}

// f(t0, T) for the tokens [0, tokens) in chunks of at most cpu::kMaxTokens, from the
// first: a token's sums are the same whatever else shares its call. Called inside a
// block of rows, so that its rows are read from memory once for all the chunks and
// stay in cache for the next.
template <class F>
void by_chunks(int tokens, const F& f) {
  for (int t0 = 0; t0 < tokens; t0 += cpu::kMaxTokens) f(t0, std::min(cpu::kMaxTokens, tokens - t0));
}

// What linear_impl adds to the sums, each optional (null): per output feature a scale
// and a bias, then a residual [T, N].
struct Epilogue {
  const float* scale;
  const float* bias;
  const float* res;
};

// One token's sums for a block's n rows, in place: * scale, + bias, + res, each where
// given (non-null), then stored as S. The steps are branch-free loops in a function of
// their own, not inlined: inlined into parallel_for's lambda GCC 12 vectorized none.
template <typename S>
[[gnu::noinline]] void finish_row(float* __restrict v, const float* __restrict scale, const float* __restrict bias,
                                  const float* __restrict res, int n, S* __restrict out) {
  if (scale != nullptr)
    for (int i = 0; i < n; ++i) v[i] *= scale[i];
  if (bias != nullptr)
    for (int i = 0; i < n; ++i) v[i] += bias[i];
  if (res != nullptr)
    for (int i = 0; i < n; ++i) v[i] += res[i];
  for (int i = 0; i < n; ++i) out[i] = cpu::to_storage<S>(v[i]);
}

// sums * scale + bias + res -> y [T, N] of storage type S.
template <typename S>
void linear_rows(const Sums& sums, int64_t N, const Epilogue& e, S* y) {
  for_blocks(N, sums.K * sums.elem, [&](int64_t n0, int rows, float* acc) {
    by_chunks(sums.tokens(), [&](int t0, int T) {
      sums(n0, rows, t0, T, acc);
      for (int t = 0; t < T; ++t)
        finish_row(acc + t * kBlockRows, e.scale != nullptr ? e.scale + n0 : nullptr,
                   e.bias != nullptr ? e.bias + n0 : nullptr, e.res != nullptr ? e.res + (t0 + t) * N + n0 : nullptr,
                   rows, y + (t0 + t) * N + n0);
    });
  });
}

// sums * scale (when given) + b (when given) + r (when given) -> y of `dtype`.
at::Tensor linear_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& b,
                       const at::Tensor& r, at::ScalarType dtype) {
  const Sums sums(x, w);
  const at::Tensor sf = scale.defined() ? scale.to(at::kFloat).contiguous() : scale;
  const at::Tensor bf = b.defined() ? b.to(at::kFloat).contiguous() : b;
  const at::Tensor rf = r.defined() ? r.to(at::kFloat).contiguous() : r;
  const Epilogue e{sf.defined() ? sf.data_ptr<float>() : nullptr, bf.defined() ? bf.data_ptr<float>() : nullptr,
                   rf.defined() ? rf.data_ptr<float>() : nullptr};
  at::Tensor y = at::empty({sums.tokens(), w.size(0)}, x.options().dtype(dtype));
  cpu::for_type(dtype, [&](auto s) {
    using S = decltype(s);
    linear_rows<S>(sums, w.size(0), e, static_cast<S*>(y.data_ptr()));
  });
  return y;
}

// One token's n gate and up sums -> A(round(g)) rounded, times round(u), rounded: as
// ATen's linear, activation and product would round each result to S. The activation
// is a loop of its own, as it calls libm; the roundings around it vectorize (not
// inlined, as finish_row).
template <typename S, class A>
[[gnu::noinline]] void gated_row(float* __restrict g, const float* __restrict u, int n, S* __restrict out) {
  for (int i = 0; i < n; ++i) g[i] = cpu::round_to<S>(g[i]);
  for (int i = 0; i < n; ++i) g[i] = A::apply(g[i]);
  for (int i = 0; i < n; ++i) out[i] = cpu::to_storage<S>(cpu::round_to<S>(g[i]) * cpu::round_to<S>(u[i]));
}

template <typename S, class A>
void gated_rows(const Sums& g, const Sums& u, int64_t I, S* y) {
  for_blocks(I, 2 * g.K * g.elem, [&](int64_t n0, int rows, float* gs) {
    float us[cpu::kMaxTokens * kBlockRows];
    by_chunks(g.tokens(), [&](int t0, int T) {
      g(n0, rows, t0, T, gs);
      u(n0, rows, t0, T, us);
      for (int t = 0; t < T; ++t)
        gated_row<S, A>(gs + t * kBlockRows, us + t * kBlockRows, rows, y + (t0 + t) * I + n0);
    });
  });
}

at::Tensor gated_impl(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, int act) {
  const Sums g(x, gate), u(g, up);
  at::Tensor y = at::empty({g.tokens(), gate.size(0)}, x.options());
  cpu::for_type(x.scalar_type(), [&](auto s) {
    using S = decltype(s);
    for_activation(act, [&](auto a) { gated_rows<S, decltype(a)>(g, u, gate.size(0), static_cast<S*>(y.data_ptr())); });
  });
  return y;
}

}  // namespace

at::Tensor cpu_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r) {
  if (!applies(x, w) || !float_type(w.scalar_type())) return {};
  const int64_t T = x.size(0), N = w.size(0);
  if (b.defined() && (b.numel() != N || !b.device().is_cpu())) return {};
  if (r.defined() && (r.sizes() != at::IntArrayRef({T, N}) || !r.device().is_cpu())) return {};
  return linear_impl(x, w, {}, b, r, x.scalar_type());
}

at::Tensor cpu_linear_sums(const at::Tensor& x, const at::Tensor& w) {
  if (!applies(x, w) || !float_type(w.scalar_type())) return {};
  return linear_impl(x, w, {}, {}, {}, at::kFloat);
}

at::Tensor cpu_gated_linear(const at::Tensor& x, const at::Tensor& w, int act) {
  if (w.dim() != 2 || w.size(0) % 2 != 0) return {};
  const int64_t I = w.size(0) / 2;
  return cpu_gated_linear(x, w.narrow(0, 0, I), w.narrow(0, I, I), act);
}

at::Tensor cpu_gated_linear(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, int act) {
  if (!applies(x, gate) || !applies(x, up) || !float_type(gate.scalar_type()) ||
      up.scalar_type() != gate.scalar_type() || up.size(0) != gate.size(0))
    return {};
  return gated_impl(x, gate, up, act);
}

at::Tensor cpu_int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale) {
  if (!applies(x, q) || q.scalar_type() != at::kChar || scale.numel() != q.size(0)) return {};
  return linear_impl(x, q, scale, {}, {}, at::kFloat);
}

double cpu_read_bandwidth(int64_t bytes, int runs) {
  constexpr int64_t kChunk = int64_t{1} << 16;  // floats a task reads
  const int64_t n = std::max<int64_t>(bytes / 4, kChunk), chunks = (n + kChunk - 1) / kChunk;
  const at::Tensor buf = at::full({n}, 0.5f);  // written, so every page is mapped before timing
  const float* p = buf.data_ptr<float>();
  const auto sum = current().load()->read_sum;
  std::atomic<float> sink{0};
  double best = 1e30;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      const int64_t first = c0 * kChunk;
      sink.store(sink.load() + sum(p + first, std::min(c1 * kChunk, n) - first));
    });
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(n) * 4 / best / 1e9;
}

std::string cpu_gemv_isa() { return current().load()->name; }

std::vector<std::string> cpu_gemv_isas() {
  std::vector<std::string> out;
  for (const Backend* b : runnable()) out.push_back(b->name);
  return out;
}

void set_cpu_gemv_isa(const std::string& isa) {
  const Backend* b = find(isa);
  if (b == nullptr) {
    std::string have;
    for (const auto& n : cpu_gemv_isas()) have += (have.empty() ? "" : ", ") + n;
    throw std::invalid_argument("CPU kernels: this CPU cannot run '" + isa + "' (it runs " + have + ")");
  }
  current().store(b);
}

std::string enable_cpu_matrix_units() {
  static std::once_flag once;
  static std::string what;
  std::call_once(once, [] {
#if defined(__x86_64__) && defined(__linux__)
    if (!__builtin_cpu_supports("avx512f")) return;  // no AMX without AVX-512
    if (!(cpuid7_edx() & (1u << 24))) return;        // CPUID.(7,0):EDX bit 24 = AMX-TILE
    // A hypervisor may show AMX in CPUID yet not enable its state (XCR0): then the
    // request "succeeds" and the permission still lacks the tile data. Check it.
    constexpr long kGetXcompPerm = 0x1024, kReqXcompPerm = 0x1023, kXtileData = 18;
    syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData);
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, kGetXcompPerm, &perm) == 0 && (perm >> kXtileData & 1)) {
      what = "AMX tile state granted by Linux";
    } else {
      ::setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", 0);
      ::setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE_BF16", 0);
      what = "this CPU reports AMX but Linux does not grant its tile state: oneDNN capped at AVX512_CORE_BF16";
    }
#endif
  });
  return what;
}

}  // namespace cascade::stage
