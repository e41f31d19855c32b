#include "stage/kernels/attention_kernels.h"

#ifdef CASCADE_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>

#include "comm/cuda_check.h"
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

}  // namespace

bool decode_store_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
                     const at::Tensor& slots, const at::Tensor& pos) {
  const int code = cuda_dtype_code(k.scalar_type());
  if (code < 0 || !cache_ok(k_cache, k) || !cache_ok(v_cache, k) || v.scalar_type() != k.scalar_type() ||
      k.dim() != 3 || v.sizes() != k.sizes() || k.size(1) != k_cache.size(1) || k.size(2) != k_cache.size(3) ||
      k.stride(2) != 1 || v.stride(2) != 1 || k.stride(1) != k.size(2) || v.stride(1) != v.size(2))
    return false;
  comm::cuda_check(
      cuda::decode_store_kv(code, static_cast<int>(k.size(0)), static_cast<int>(k.size(1)), static_cast<int>(k.size(2)),
                            static_cast<int>(k_cache.size(2)), k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0),
                            k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr<int64_t>(), pos.data_ptr<int64_t>(),
                            at::cuda::getCurrentCUDAStream().stream()),
      "the KV store kernel");
  return true;
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& slots, const at::Tensor& pos, const DecodeAttentionArgs& args,
                            at::Tensor& counters) {
  const int code = cuda_dtype_code(q.scalar_type());
  if (code < 0 || !q.is_cuda() || q.dim() != 3 || !cache_ok(k_cache, q) || !cache_ok(v_cache, q)) return {};
  const int64_t B = q.size(0), heads = q.size(1), D = q.size(2), kv_heads = k_cache.size(1);
  if ((D != 64 && D != 128 && D != 256) || D != k_cache.size(3) || heads % kv_heads != 0 || heads / kv_heads > 8 ||
      !counters.defined() || counters.numel() < B * kv_heads ||
      (args.slopes.defined() && (args.slopes.scalar_type() != at::kFloat || args.slopes.numel() != heads)))
    return {};
  // Enough blocks for four per multiprocessor, and at least 16 keys per block: a block's
  // time is its warps' chains of dependent keys (4 keys a warp here), not bandwidth, at
  // the spans of a chat (20 blocks of up to 64 keys took 8.8 us at batch 1 on the H200).
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t pairs = B * kv_heads;
  const int64_t splits = std::clamp<int64_t>((4 * sms + pairs - 1) / pairs, 1, std::max<int64_t>(1, args.span / 16));
  const at::Tensor qc = q.contiguous();
  at::Tensor o = at::empty_like(qc);
  at::Tensor work = at::empty({splits > 1 ? splits * B * heads * (D + 2) : 1}, q.options().dtype(at::kFloat));
  const cuda::DecodeAttention a{code,
                                static_cast<int>(B),
                                static_cast<int>(heads),
                                static_cast<int>(kv_heads),
                                static_cast<int>(D),
                                static_cast<int>(k_cache.size(2)),
                                static_cast<int>(args.span),
                                static_cast<int>(std::min<int64_t>(splits, 64)),
                                static_cast<int>(args.window),
                                static_cast<float>(args.scale),
                                static_cast<float>(args.softcap),
                                args.slopes.defined() ? args.slopes.data_ptr<float>() : nullptr};
  comm::cuda_check(
      cuda::decode_attention(a, qc.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr<int64_t>(),
                             pos.data_ptr<int64_t>(), o.data_ptr(), work.data_ptr<float>(), counters.data_ptr<int>(),
                             at::cuda::getCurrentCUDAStream().stream()),
      "the decode attention kernel");
  return o;
}
#else
// No CUDA kernels in this build: the ATen path everywhere.
bool decode_store_kv(const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&,
                     const at::Tensor&) {
  return false;
}
at::Tensor decode_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const DecodeAttentionArgs&, at::Tensor&) {
  return {};
}
#endif

}  // namespace cascade::stage
