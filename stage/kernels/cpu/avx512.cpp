// The AVX-512 (F + BW) back end (isa.h); built with those -m flags only.
#include "stage/kernels/cpu/avx512_vec.h"

namespace cascade::stage::cpu {

const Backend& avx512_backend() {
  static const Backend b = make_backend<Avx512>("avx512");
  return b;
}

}  // namespace cascade::stage::cpu
