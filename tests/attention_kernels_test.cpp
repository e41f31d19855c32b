// The in-place decode attention kernels' contract: where they do not apply (a CPU cache,
// a build without Cascade's CUDA kernels, an unsupported shape) they say so and touch
// nothing, so KvCache takes the ATen path. Their numerics against that path, on a GPU,
// are in kv_cache_test (DecodeKernelsMatchTheAtenPathOnTheGpu). Their launch shape is a
// plain rule, checked here.
#include "stage/kernels/attention_kernels.h"

#include <gtest/gtest.h>

#include "stage/kernels/attention_shape.h"

namespace cascade::stage {
namespace {

// The launch shape (attention_shape.h), a plain rule checked here without a GPU, on the
// H200's 132 multiprocessors: the anchor has 20 KV heads of 128.
TEST(AttentionKernels, LaunchShapeFollowsGroupPairsAndSpan) {
  EXPECT_EQ(attention_wide_warps(1, 128), 16);
  EXPECT_EQ(attention_wide_warps(4, 128), 16);  // 512 elements a warp: still fits
  EXPECT_EQ(attention_wide_warps(5, 128), 4);   // the kernel's group of 8: 1,024
  EXPECT_EQ(attention_wide_warps(2, 256), 16);
  EXPECT_EQ(attention_wide_warps(4, 256), 4);
  constexpr int64_t kSms = 132;
  // A chat (batch 1, 20 pairs): wide blocks; a short span gets one split (4 keys a warp
  // at least), a long one as many as give 16 warps a multiprocessor: ceil(2112 / 320).
  AttentionShape s = attention_shape(1, 128, 20, 64, kSms, 1);
  EXPECT_EQ(s.warps, 16);
  EXPECT_EQ(s.splits, 1);
  s = attention_shape(1, 128, 20, 2048, kSms, 1);
  EXPECT_EQ(s.warps, 16);
  EXPECT_EQ(s.splits, 7);
  // Batch 16 (320 pairs, more than the multiprocessors): blocks of 4, ceil(2112 / 1280).
  s = attention_shape(1, 128, 320, 2048, kSms, 1);
  EXPECT_EQ(s.warps, 4);
  EXPECT_EQ(s.splits, 2);
  // CASCADE_WIDE_ATTENTION: 0 never wide, 2 wide wherever they fit.
  EXPECT_EQ(attention_shape(1, 128, 20, 2048, kSms, 0).warps, 4);
  EXPECT_EQ(attention_shape(1, 128, 320, 2048, kSms, 2).warps, 16);
  EXPECT_EQ(attention_shape(8, 128, 20, 2048, kSms, 2).warps, 4);  // 16 do not fit
  // One pair over a long span: capped at the merge's 64 splits.
  EXPECT_EQ(attention_shape(1, 128, 1, 1 << 20, kSms, 1).splits, kMaxAttentionSplits);
}

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
