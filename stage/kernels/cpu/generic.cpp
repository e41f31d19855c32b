// The portable back end (isa.h): plain loops over eight floats, which the compiler
// vectorizes with whatever the baseline target has (SSE2 on x86-64).
#include "stage/kernels/cpu/dot_block.h"

namespace cascade::stage::cpu {
namespace {

struct Generic {
  struct reg {
    float v[8];
  };
  static constexpr int kRegs = 16;
  static constexpr int kWidth = 8;
  static reg zero() { return reg{}; }
  static reg fma(const reg& a, const reg& b, reg c) {
    for (int i = 0; i < kWidth; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static reg load(const float* p) {
    reg r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  template <WeightType WT>
  static reg load_w(const void* w, int64_t k) {
    reg r;
    for (int i = 0; i < kWidth; ++i) r.v[i] = widen<WT>(static_cast<const typename ElemOf<WT>::type*>(w), k + i);
    return r;
  }
  static constexpr bool kPairs = false;
  static constexpr bool kBf16Dot = false;
  static void load_bf16_pairs(const uint16_t*, reg*, reg*) {}
  static float sum(const reg& v) {
    float s = 0;
    for (float f : v.v) s += f;
    return s;
  }
};

}  // namespace

const Backend& generic_backend() {
  static const Backend b = make_backend<Generic>("generic");
  return b;
}

}  // namespace cascade::stage::cpu
