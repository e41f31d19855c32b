#include "stage/kernels/attention_kernels.h"

#ifdef CASCADE_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>

#include "comm/cuda_check.h"
#include "config/env.h"
#include "stage/kernels/attention_shape.h"
#include "stage/kernels/cuda_dtype.h"
#include "stage/kernels/cuda_kernels.h"
#endif

namespace cascade::stage {

#ifdef CASCADE_WITH_CUDA_KERNELS
namespace {

bool cache_ok(const at::Tensor& c, const at::Tensor& like) {
  return c.is_cuda() && c.dim() == 4 && c.is_contiguous() && c.scalar_type() == like.scalar_type() &&
         reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0;
}

// k/v [B, kv_heads, D], heads packed, rows possibly strided, fit the caches.
bool store_ok(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  return cuda_dtype_code(k.scalar_type()) >= 0 && cache_ok(k_cache, k) && cache_ok(v_cache, k) &&
         v.scalar_type() == k.scalar_type() && k.dim() == 3 && v.sizes() == k.sizes() && k.size(1) == k_cache.size(1) &&
         k.size(2) == k_cache.size(3) && k.stride(2) == 1 && v.stride(2) == 1 && k.stride(1) == k.size(2) &&
         v.stride(1) == v.size(2);
}

cuda::DecodeStoreKv store_args(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
                               const at::Tensor& slots, const at::Tensor& pos) {
  cuda::DecodeStoreKv a;
  a.dtype = cuda_dtype_code(k.scalar_type());
  a.B = static_cast<int>(k.size(0));
  a.kv_heads = static_cast<int>(k.size(1));
  a.D = static_cast<int>(k.size(2));
  a.max_seq = static_cast<int>(k_cache.size(2));
  a.k = k.data_ptr();
  a.k_row = k.stride(0);
  a.v = v.data_ptr();
  a.v_row = v.stride(0);
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.slots = slots.data_ptr<int64_t>();
  a.pos = pos.data_ptr<int64_t>();
  return a;
}

}  // namespace

bool decode_store_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
                     const at::Tensor& slots, const at::Tensor& pos) {
  if (!store_ok(k, v, k_cache, v_cache)) return false;
  comm::cuda_check(
      cuda::decode_store_kv(store_args(k, v, k_cache, v_cache, slots, pos), at::cuda::getCurrentCUDAStream().stream()),
      "the KV store kernel");
  return true;
}

namespace {

// The RoPE + store's inputs fit: q [B, heads, D] (heads packed, rows possibly strided),
// k/v as store_ok, cos/sin [B, D] in k's dtype.
bool rope_ok(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
             const at::Tensor& sin, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  return store_ok(k, v, k_cache, v_cache) && q.dim() == 3 && q.scalar_type() == k.scalar_type() &&
         q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.stride(2) == 1 && q.stride(1) == q.size(2) &&
         cos.scalar_type() == k.scalar_type() && sin.scalar_type() == k.scalar_type() &&
         cos.sizes() == at::IntArrayRef({k.size(0), k.size(2)}) && sin.sizes() == cos.sizes() && k.size(2) % 2 == 0;
}

// store_args with RoPE by cos/sin (contiguous, kept alive by the caller) on k and q.
cuda::DecodeStoreKv rope_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                              const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots,
                              const at::Tensor& pos) {
  cuda::DecodeStoreKv a = store_args(k, v, k_cache, v_cache, slots, pos);
  a.cos = cos.data_ptr();
  a.sin = sin.data_ptr();
  a.q = q.data_ptr();
  a.q_row = q.stride(0);
  a.heads = static_cast<int>(q.size(1));
  return a;
}

}  // namespace

at::Tensor decode_rope_store_kv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                                const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                                const at::Tensor& slots, const at::Tensor& pos) {
  if (!rope_ok(q, k, v, cos, sin, k_cache, v_cache)) return {};
  const at::Tensor c = cos.contiguous(), s = sin.contiguous();
  at::Tensor q_out = at::empty(q.sizes(), q.options());
  cuda::DecodeStoreKv a = rope_args(q, k, v, c, s, k_cache, v_cache, slots, pos);
  a.q_out = q_out.data_ptr();
  comm::cuda_check(cuda::decode_store_kv(a, at::cuda::getCurrentCUDAStream().stream()), "the RoPE + KV store kernel");
  return q_out;
}

bool decode_attention_applies(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const DecodeAttentionArgs& args, const at::Tensor& counters) {
  if (cuda_dtype_code(q.scalar_type()) < 0 || !q.is_cuda() || q.dim() != 3 || !cache_ok(k_cache, q) ||
      !cache_ok(v_cache, q))
    return false;
  const int64_t B = q.size(0), heads = q.size(1), D = q.size(2), kv_heads = k_cache.size(1);
  return (D == 64 || D == 128 || D == 256) && D == k_cache.size(3) && heads % kv_heads == 0 && heads / kv_heads <= 8 &&
         counters.defined() && counters.numel() >= B * kv_heads &&
         (!args.slopes.defined() || (args.slopes.scalar_type() == at::kFloat && args.slopes.numel() == heads));
}

namespace {

// decode_attention, with `st`'s RoPE and KV store in the same launch when given (then q
// is the raw, possibly strided q that st reads).
at::Tensor attention_call(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& slots, const at::Tensor& pos, const DecodeAttentionArgs& args,
                          at::Tensor& counters, const cuda::DecodeStoreKv* st) {
  const int code = cuda_dtype_code(q.scalar_type());
  const int64_t B = q.size(0), heads = q.size(1), D = q.size(2), kv_heads = k_cache.size(1);
  static const int wide = static_cast<int>(config::env_int("CASCADE_WIDE_ATTENTION").value_or(1));
  const AttentionShape shape = attention_shape(static_cast<int>(heads / kv_heads), static_cast<int>(D), B * kv_heads,
                                               args.span, cuda::multiprocessors(), wide);
  const at::Tensor qc = st ? q : q.contiguous();
  at::Tensor o = at::empty({B, heads, D}, q.options());
  const int64_t work_elems = shape.splits > 1 ? shape.splits * B * heads * (D + 2) : 1;  // the splits' partials
  at::Tensor work = at::empty({work_elems}, q.options().dtype(at::kFloat));
  const cuda::DecodeAttention a{code,
                                static_cast<int>(B),
                                static_cast<int>(heads),
                                static_cast<int>(kv_heads),
                                static_cast<int>(D),
                                static_cast<int>(k_cache.size(2)),
                                static_cast<int>(args.span),
                                shape.splits,
                                static_cast<int>(args.window),
                                static_cast<float>(args.scale),
                                static_cast<float>(args.softcap),
                                args.slopes.defined() ? args.slopes.data_ptr<float>() : nullptr,
                                shape.warps};
  comm::cuda_check(
      cuda::decode_attention(a, qc.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr<int64_t>(),
                             pos.data_ptr<int64_t>(), o.data_ptr(), work.data_ptr<float>(), counters.data_ptr<int>(),
                             at::cuda::getCurrentCUDAStream().stream(), st),
      st ? "the RoPE + KV store + decode attention kernel" : "the decode attention kernel");
  return o;
}

}  // namespace

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& slots, const at::Tensor& pos, const DecodeAttentionArgs& args,
                            at::Tensor& counters) {
  if (!decode_attention_applies(q, k_cache, v_cache, args, counters)) return {};
  return attention_call(q, k_cache, v_cache, slots, pos, args, counters, nullptr);
}

at::Tensor decode_rope_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                                 const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                                 const at::Tensor& slots, const at::Tensor& pos, const DecodeAttentionArgs& args,
                                 at::Tensor& counters) {
  static const bool enabled = config::env_flag("CASCADE_FUSED_ATTENTION", true);
  if (!enabled || !rope_ok(q, k, v, cos, sin, k_cache, v_cache) ||
      !decode_attention_applies(q, k_cache, v_cache, args, counters))
    return {};
  const at::Tensor c = cos.contiguous(), s = sin.contiguous();
  const cuda::DecodeStoreKv st = rope_args(q, k, v, c, s, k_cache, v_cache, slots, pos);
  return attention_call(q, k_cache, v_cache, slots, pos, args, counters, &st);
}
#else
// No CUDA kernels in this build: the ATen path everywhere.
bool decode_store_kv(const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&,
                     const at::Tensor&) {
  return false;
}
at::Tensor decode_rope_store_kv(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&) {
  return {};
}
bool decode_attention_applies(const at::Tensor&, const at::Tensor&, const at::Tensor&, const DecodeAttentionArgs&,
                              const at::Tensor&) {
  return false;
}
at::Tensor decode_rope_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const DecodeAttentionArgs&, at::Tensor&) {
  return {};
}
at::Tensor decode_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const DecodeAttentionArgs&, at::Tensor&) {
  return {};
}
#endif

}  // namespace cascade::stage
