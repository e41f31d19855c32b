// Matrix products on the CPU for every token count: x [tokens, in] against a weight
// [out, in] in float32, bfloat16, float16 or int8 rows. Each block of 16 rows is read
// from memory once for all the tokens, which go through it in chunks of 16 while its rows
// are in cache: a decode step and a prompt read the weight once at memory bandwidth;
// ATen's CPU paths for these shapes read the weight at a fraction of that
// (docs/performance.md, "CPU decode"), and LibTorch 1.13 widens a whole int8 weight to
// float32 per call. Sums are float32 whatever the weight type, rounded once to x's dtype.
// A token's result never depends on the other tokens of the call (chunking and tile
// shapes do not change the order of its sums), so a sequence gets the same tokens in
// any batch: sending prefill to a faster GEMM (oneDNN, OpenBLAS) would break that.
//
// The kernels are chosen at run time by the CPU's features (AVX-512 with BF16, AVX-512,
// AVX2 + FMA + F16C, else portable loops), capped by the CASCADE_CPU_ISA variable
// (generic | avx2 | avx512 | avx512bf16), and split over rows with at::parallel_for in tasks of at least 512 KiB of
// weight, so they use the threads the process was given (--threads,
// at::set_num_threads) where the weight is large enough to pay for them. Each function
// returns an undefined tensor where it does not apply (a CUDA tensor, another layout),
// and the caller takes the ATen path. Thread-safe.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace cascade::stage {

// at::linear(x, w, b) (+ r): x [T, in] float32/bfloat16/float16, w [out, in] contiguous
// in one of those, b [out] or undefined, r [T, out] or undefined -> [T, out] in x's dtype.
at::Tensor cpu_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r = {});
// x w^T as its float32 sums, unrounded, for x and w as cpu_linear's -> [T, out] float32:
// attention's scores (cpu_attention.h).
at::Tensor cpu_linear_sums(const at::Tensor& x, const at::Tensor& w);
// act(x gate^T) * (x up^T) with gate, up [I, in] contiguous, of one type -> [T, I] in x's
// dtype, each result rounded to it as ATen's linear, activation and product round; act
// is the Activation enum's value (stage/kernels/ops.h). The first form takes w [2 * I,
// in] = [gate; up].
at::Tensor cpu_gated_linear(const at::Tensor& x, const at::Tensor& w, int act);
at::Tensor cpu_gated_linear(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, int act);
// LLM.int8's weight-only product: (x q^T) * scale, q [out, in] int8 contiguous, scale
// [out] -> [T, out] float32.
at::Tensor cpu_int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale);

// The memory read bound these kernels are measured against: GB/s of a read of `bytes`
// (a few GB, well past the caches) through the current back end with the threads
// at::parallel_for uses, best of `runs`.
double cpu_read_bandwidth(int64_t bytes = int64_t{2} << 30, int runs = 5);

// The instruction set the kernels use now ("avx512bf16", "avx512", "avx2" or "generic"):
// with avx512bf16, bfloat16 tokens against bfloat16 weights are multiplied and summed in
// pairs by VDPBF16PS, unwidened (the other types as with avx512), except on CPUs with
// AMX-BF16, where that was measured slower (there bfloat16 as with avx512;
// CASCADE_CPU_BF16_DOT=1 or 0 overrides). And those this CPU can run, best first.
std::string cpu_gemv_isa();
std::vector<std::string> cpu_gemv_isas();
// Uses `isa` from now on (tests and benchmarks compare them); throws std::invalid_argument
// naming what this CPU can run when it cannot run `isa`.
void set_cpu_gemv_isa(const std::string& isa);

// Linux (>= 5.16) gives a process the AMX tile registers only once it asks
// (arch_prctl ARCH_REQ_XCOMP_PERM); an AMX instruction before that is SIGILL. The
// oneDNN inside Debian's LibTorch 1.13 uses AMX for bfloat16 matmuls (attention) on
// Sapphire Rapids and later without asking, so the first long-enough bf16 decode killed
// the process. Every process that computes on the CPU calls this before its first
// matmul (Model::load does): it asks once; if the permission then still lacks the tile
// data (Linux said no, or a VM shows AMX in CPUID without enabling it, as this project's
// 2-core VM does), it caps oneDNN below AMX (ONEDNN_MAX_CPU_ISA) instead. Returns a line saying what it did,
// empty where there is no AMX. Thread-safe; idempotent.
std::string enable_cpu_matrix_units();

}  // namespace cascade::stage
