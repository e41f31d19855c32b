// The launchers of Cascade's own CUDA kernels (stage/*.cu), for the C++ wrappers that
// check shapes and pass LibTorch's stream (stage/int8_kernels.h, stage/fused_kernels.h).
// Raw pointers only, so nvcc compiles the kernels without LibTorch's headers. Each
// returns the launch error. Included only where CASCADE_WITH_CUDA_KERNELS is defined.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace cascade::stage::cuda {

constexpr int kMaxTokens = 8;  // the most tokens the decode kernels take

// The current device's multiprocessors, asked once per device (1 where it cannot be asked).
int multiprocessors();

// LLM.int8's activation split of x [T, K] (dtype 0 float32, 1 float16, 2 bfloat16), one
// block a token, into the form the decode projections read (GemvArgs::sx): ints [T, K]
// in x's dtype, row t token t's int8 values (exact in any float type; its outliers 0),
// and sx [T, kSplitRow] float32, a row a token: the int8 row's scale, the count n of its
// outliers, then kSplitList columns and kSplitList values, the first n of each listing
// the outliers (columns as exact floats; the rest 0). A token's outliers are its values
// with |x| >= threshold, exactly the `slots` largest where there are more (ties at the
// last one's value taken by column). The list's order is fixed by the
// values' places (not by timing), so sums over it are reproducible. T in [1,
// kSplitMaxTokens], slots in [1, kSplitList], threshold > 0; x and ints 16-byte aligned,
// K whole 16-byte vectors of x's type, at most 8,192 of them.
constexpr int kSplitMaxTokens = 32, kSplitList = 32, kSplitRow = 2 + 2 * kSplitList;
cudaError_t int8_split(int dtype, const void* x, int T, int K, float threshold, int slots, void* ints, float* sx,
                       cudaStream_t stream);

// dtype: 0 float32, 1 float16, 2 bfloat16.
cudaError_t fused_rms_norm(int dtype, const void* x, const void* w, void* y, int rows, int H, float eps,
                           cudaStream_t stream);
// y [T, N] = act(gu[:, :N]) * gu[:, N:] for gu [T, 2N] (act: Activation's value).
cudaError_t fused_gated_act(int dtype, const void* gu, void* y, int64_t T, int N, int act, cudaStream_t stream);
// x [tokens, heads, dim] with token stride x_row elements (heads packed) -> y contiguous.
cudaError_t fused_rope(int dtype, const void* x, int64_t x_row, const void* cos, const void* sin, void* y, int tokens,
                       int heads, int dim, cudaStream_t stream);
// The decode GEMV (stage/kernels/gemv.cuh, small_gemm.cuh): y [T, N] = x [T, K] times
// w's rows, each row read once per kMaxTokens tokens (GEMV) or per 64 (tensor cores), T
// in [1, gemv_max_tokens(g)]. dtype is x's, b's, r's and y's: 1 float16 or 2 bfloat16,
// where w is the same; with int8 weights (int8 rows, `scale` float32 [N], [2N] gated)
// also 0 float32, which takes the plain epilogue only. K % 8 == 0 (16-bit) or K % 16 ==
// 0 (int8); w 16-byte aligned; b, r may be null.
struct GemvArgs {
  int dtype = 2;
  bool int8 = false;
  int T = 0, K = 0, N = 0;
  const void* x = nullptr;
  const void* w = nullptr;
  const float* scale = nullptr;
  const void* b = nullptr;
  const void* r = nullptr;  // [T, N]: y = r + linear (the residual add, rounded as the two ATen ops round)
  void* y = nullptr;
  int act = 0;  // fused_gemv_gated: 0 silu, 1 relu, 2 gelu (erf), 3 gelu (tanh)
  // LLM.int8 with outliers (int8 rows only): x is int8_split's ints [T, K] with its rows
  // sx [T, kSplitRow], and y[t, n] = scale[n] (sx[t][0] x[t] . w[n] + the listed
  // outliers' products with w[n]), then the epilogue. Null: x is the activations.
  const float* sx = nullptr;
  int tpr = 0;  // threads per weight row: 32, 64 or 128; 0 picks by shape (bench/gpu_gemv_bench)
  // 0: by token count (the tensor-core kernel from a few tokens on where it applies); 1
  // the GEMV; 2 the tensor-core kernel (stage/kernels/small_gemm.cuh), an error where it
  // does not apply. 1 and 2 are for bench/gpu_gemv_bench.
  int kernel = 0;
};
// The most tokens one fused_gemv call takes for g's types and K (g.T ignored). 16-bit
// weights: kMaxTokens, beyond which cuBLAS reads them faster than the tensor-core kernel
// does (bench/gpu_gemv_bench: 16 tokens, a layer's projections 81 us against 97).
// int8 rows: 64 where the tensor-core kernel applies (16-bit x on sm_80 or later, K %
// 64 == 0), else 32 in launches of kMaxTokens (ATen's path would copy the whole weight
// to floats). The tensor-core kernel itself takes 1-64 tokens of either (g.kernel = 2),
// and CASCADE_TENSOR_CORE_GEMV=N (cuda_common.cuh) lets 16-bit weights use it up to 64.
int gemv_max_tokens(const GemvArgs& g);
// Whether the tensor-core kernel takes g (its T ignored): 16-bit x, compute capability
// 8.0 or later and not switched off (cuda_common.cuh, tensor_core_from), K % 32 == 0
// (16-bit weights) or K % 64 == 0 (int8 rows).
bool tensor_core_applies(const GemvArgs& g);
cudaError_t fused_gemv(const GemvArgs& g, cudaStream_t stream);
// A gated MLP's first half: w [2N, K] holds gate rows then up rows; y [T, N] =
// act(x w_gate) * (x w_up); g.b and g.r unused.
cudaError_t fused_gemv_gated(const GemvArgs& g, cudaStream_t stream);

// Decode attention over the KV cache in place (stage/kernels/attention_kernels.cu).
// Caches [rows, kv_heads, max_seq, D]; q [B, heads, D]; o [B, heads, D]; slots/pos [B]
// int64 on the device. Each sequence b attends its query (at position pos[b]) to the
// keys [max(0, pos - window + 1), pos] of its slot. `work` holds splits * B * heads *
// (D + 2) floats and `counters` B * kv_heads zeroed ints (left zeroed on return).
// D in {64, 128, 256}, heads / kv_heads <= 8; slopes [heads] float32 or null.
struct DecodeAttention {
  int dtype, B, heads, kv_heads, D, max_seq, span, splits, window;
  float scale, softcap;
  const float* slopes;
  int warps;  // per block: 4, or attention_wide_warps(heads / kv_heads, D) (attention_shape.h)
};
// Whether decode attention issues each warp's first keys before it waits for the kernel
// before it, several a warp in flight (attention_kernels.cu): true unless
// CASCADE_ATTENTION_PREFETCH is "0" (then one key in flight, issued after the wait: the
// switch for measuring the difference). Host code.
bool attention_prefetch();

// Writes each sequence's new key and value into its slot at pos[b]: k/v [B, kv_heads, D]
// with row strides k_row/v_row (elements) and head stride D. With cos/sin ([B, D]) the
// key is rotated (RoPE, rotate-half) on its way in, and when q is given its rows [B,
// heads, D] (row stride q_row, heads packed) are rotated into q_out [B, heads, D]: a
// decode step's RoPE and KV store in one launch.
struct DecodeStoreKv {
  int dtype = 2, B = 0, kv_heads = 0, D = 0, max_seq = 0;
  const void* k = nullptr;
  int64_t k_row = 0;
  const void* v = nullptr;
  int64_t v_row = 0;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  const int64_t* slots = nullptr;
  const int64_t* pos = nullptr;
  const void* cos = nullptr;  // null: no rotation (then q must be null)
  const void* sin = nullptr;
  const void* q = nullptr;
  int64_t q_row = 0;
  void* q_out = nullptr;
  int heads = 0;
};
cudaError_t decode_store_kv(const DecodeStoreKv& a, cudaStream_t stream);
// With `store` (B, kv_heads, D and the caches decode_attention's own; q, cos and sin
// set), its work rides in the same launch: the block whose key range holds pos[b] writes
// the rotated key and the value, and the query is store->q rotated in registers (`q` is
// unused), so a step's RoPE, KV store and attention are one kernel. Without it, q [B,
// heads, D] is already rotated and the cache already holds the step's keys.
cudaError_t decode_attention(const DecodeAttention& a, const void* q, const void* k_cache, const void* v_cache,
                             const int64_t* slots, const int64_t* pos, void* o, float* work, int* counters,
                             cudaStream_t stream, const DecodeStoreKv* store = nullptr);

}  // namespace cascade::stage::cuda
