// The in-place decode attention kernels' contract: where they do not apply (a CPU cache,
// a build without Cascade's CUDA kernels, an unsupported shape) they say so and touch
// nothing, so KvCache takes the ATen path. Their numerics against that path, on a GPU,
// are in kv_cache_test (DecodeKernelsMatchTheAtenPathOnTheGpu).
#include "stage/kernels/attention_kernels.h"

#include <gtest/gtest.h>

namespace cascade::stage {
namespace {

TEST(AttentionKernels, CpuTensorsTakeTheAtenPath) {
  at::Tensor kc = at::zeros({3, 2, 16, 64}), vc = at::zeros({3, 2, 16, 64});
  const at::Tensor k = at::ones({1, 2, 64}), v = at::ones({1, 2, 64});
  const at::Tensor slots = at::tensor({1}, at::kLong), pos = at::tensor({4}, at::kLong);
  EXPECT_FALSE(decode_store_kv(k, v, kc, vc, slots, pos));
  EXPECT_EQ(kc.abs().sum().item<double>(), 0.0);  // nothing written
  at::Tensor counters = at::zeros({6}, at::kInt);
  const DecodeAttentionArgs args{16, 0.125, 0, 0, {}};
  EXPECT_FALSE(decode_attention(at::ones({1, 4, 64}), kc, vc, slots, pos, args, counters).defined());
}

TEST(AttentionKernels, UnsupportedShapesTakeTheAtenPath) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  const auto opts = at::TensorOptions().device(at::kCUDA);
  at::Tensor kc = at::zeros({3, 2, 16, 96}, opts), vc = at::zeros({3, 2, 16, 96}, opts);
  const at::Tensor slots = at::tensor({1}, opts.dtype(at::kLong)), pos = at::tensor({4}, opts.dtype(at::kLong));
  at::Tensor counters = at::zeros({6}, opts.dtype(at::kInt));
  const DecodeAttentionArgs args{16, 0.1, 0, 0, {}};
  EXPECT_FALSE(decode_attention(at::ones({1, 4, 96}, opts), kc, vc, slots, pos, args, counters).defined());  // D 96
  at::Tensor kc2 = at::zeros({3, 1, 16, 64}, opts), vc2 = at::zeros({3, 1, 16, 64}, opts);
  EXPECT_FALSE(decode_attention(at::ones({1, 16, 64}, opts), kc2, vc2, slots, pos, args, counters).defined());  // 16/1
}

}  // namespace
}  // namespace cascade::stage
