// How decode attention's launch is shaped (stage/kernels/attention_kernels.cu): warps a
// block and splits of the key range, from the GQA group, head size, (sequence, KV head)
// pairs, key span and the device's multiprocessors. A plain rule with no CUDA in it, so
// that the CPU tests check it; attention_kernels.cpp applies it, and the kernel's launch
// checks its warps against attention_wide_warps. Header-only; no state.
#pragma once

#include <algorithm>
#include <cstdint>

namespace cascade::stage {

// Blocks of 16 warps keep a float per warp, query head of the group (rounded up to 1, 2,
// 4 or 8) and element: within this many elements a warp (8 KiB a warp at most), else 4.
constexpr int kWideAttentionElems = 512;
constexpr int kMaxAttentionSplits = 64;  // the kernel's merge takes at most this many

// The most warps a block takes for this GQA group and head size: 16 where they fit
// (kWideAttentionElems), else 4.
constexpr int attention_wide_warps(int group, int D) {
  const int g = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;  // the kernel's G
  return g * D <= kWideAttentionElems ? 16 : 4;
}

struct AttentionShape {
  int warps = 4;   // a block
  int splits = 1;  // of the key range, each a block per pair
};

// Warps: the wide blocks while the pairs are at most the multiprocessors (a chat's few
// sequences: more warps share a key range), else 4 (a batch's many pairs fill the GPU
// with small blocks: 5% more tokens/s at batch 16 on the H100 anchor, 2026-12-06).
// `wide` is CASCADE_WIDE_ATTENTION: 0 never wide, 2 wide wherever they fit (to measure),
// else the rule. Splits: enough blocks for 16 warps a multiprocessor, but at least 4 keys
// a warp, since a block's time is its warps' chains of dependent keys, not bandwidth, at
// the spans of a chat (20 blocks of up to 64 keys took 8.8 us at batch 1 on the H200),
// and each split beyond one adds a merge through global memory.
constexpr AttentionShape attention_shape(int group, int D, int64_t pairs, int64_t span, int64_t sms, int wide) {
  AttentionShape s;
  s.warps = wide == 0 || (wide != 2 && pairs > sms) ? 4 : attention_wide_warps(group, D);
  const int64_t blocks = (16 * sms + pairs * s.warps - 1) / (pairs * s.warps);
  const int64_t by_keys = std::max<int64_t>(1, span / (4 * s.warps));
  s.splits = static_cast<int>(std::clamp<int64_t>(std::min(blocks, by_keys), 1, kMaxAttentionSplits));
  return s;
}

}  // namespace cascade::stage
