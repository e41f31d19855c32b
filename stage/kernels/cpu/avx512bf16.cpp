// The AVX-512 back end plus AVX-512 BF16's dot product (isa.h, Backend::dot_bf16); built
// with -mavx512bf16 and run only where the CPU has it (AMD Zen 4 and later, Intel
// Cooper Lake, Sapphire Rapids and later).
#include "stage/kernels/cpu/avx512_vec.h"

namespace cascade::stage::cpu {
namespace {

// VDPBF16PS: each float lane adds the products of one adjacent pair of bfloat16, 2j and
// 2j + 1 of every 32, the lanes dot_tile_pairs gives the same elements, with neither
// operand widened first. A product of two bfloat16 is exact in float32; the instruction
// takes subnormal inputs and results as zero.
struct Avx512Bf16 : Avx512 {
  static constexpr bool kBf16Dot = true;
  using breg = __m512bh;
  static breg load_bh(const uint16_t* p) { return reinterpret_cast<breg>(_mm512_loadu_si512(p)); }
  static reg dot_bf16(reg acc, breg w, breg x) { return _mm512_dpbf16_ps(acc, w, x); }
};

}  // namespace

const Backend& avx512bf16_backend() {
  static const Backend b = make_backend<Avx512Bf16>("avx512bf16");
  return b;
}

}  // namespace cascade::stage::cpu
