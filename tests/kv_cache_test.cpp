#include "stage/kv_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "stage/layers/rope.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

// Plain causal attention for one sequence with GQA, written out directly.
at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start, int64_t window,
                     double scale) {
  const int64_t n = q.size(0), heads = q.size(1), kvh = k.size(1);
  at::Tensor out = at::zeros_like(q);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kvh);
      std::vector<at::Tensor> scores;
      const int64_t qpos = start + i;
      at::Tensor s = at::full({qpos + 1}, -INFINITY);
      for (int64_t j = 0; j <= qpos; ++j) {
        if (window > 0 && qpos - j >= window) continue;
        s[j] = (q[i][h] * k[j][g]).sum() * scale;
      }
      at::Tensor p = at::softmax(s, 0);
      out[i][h] = (p.unsqueeze(1) * v.narrow(0, 0, qpos + 1).select(1, g)).sum(0);
    }
  }
  return out.view({n, heads * q.size(2)});
}

TEST(KvCache, PrefillThenDecodeMatchesDirectAttention) {
  at::manual_seed(0);
  const int64_t heads = 4, kvh = 2, d = 8, total = 9;
  KvCache kv({0}, /*slots=*/3, kvh, /*max_seq_len=*/16, d, at::kFloat, at::kCPU);
  at::Tensor q = at::randn({total, heads, d}), k = at::randn({total, kvh, d}), v = at::randn({total, kvh, d});
  const double scale = 1.0 / std::sqrt(double(d));
  for (int64_t window : {0, 3}) {
    // Slot 2: prefill 6 tokens, then 3 decode steps of one token.
    at::Tensor got =
        kv.attend(0, q.narrow(0, 0, 6), k.narrow(0, 0, 6), v.narrow(0, 0, 6), Batch{{{2, 0, 6}}}, scale, window);
    std::vector<at::Tensor> rows = {got};
    for (int64_t t = 6; t < total; ++t) {
      rows.push_back(
          kv.attend(0, q.narrow(0, t, 1), k.narrow(0, t, 1), v.narrow(0, t, 1), Batch{{{2, t, 1}}}, scale, window));
    }
    EXPECT_TRUE(at::allclose(at::cat(rows, 0), reference(q, k, v, 0, window, scale), 1e-5, 1e-5))
        << "window " << window;
  }
}

TEST(KvCache, RaggedBatchKeepsSequencesApart) {
  at::manual_seed(1);
  const int64_t heads = 2, d = 4;
  KvCache together({5}, 2, heads, 8, d, at::kFloat, at::kCPU), alone({5}, 2, heads, 8, d, at::kFloat, at::kCPU);
  at::Tensor q = at::randn({7, heads, d}), k = at::randn({7, heads, d}), v = at::randn({7, heads, d});
  Batch both{{{0, 0, 3}, {1, 0, 4}}};
  at::Tensor got = together.attend(5, q, k, v, both, 0.5, 0);
  at::Tensor a = alone.attend(5, q.narrow(0, 0, 3), k.narrow(0, 0, 3), v.narrow(0, 0, 3), Batch{{{0, 0, 3}}}, 0.5, 0);
  at::Tensor b = alone.attend(5, q.narrow(0, 3, 4), k.narrow(0, 3, 4), v.narrow(0, 3, 4), Batch{{{1, 0, 4}}}, 0.5, 0);
  EXPECT_TRUE(at::allclose(got, at::cat({a, b}, 0), 1e-6, 1e-6));
}

TEST(KvCache, BatchedDecodeEqualsOneSequenceAtATime) {
  at::manual_seed(2);
  const int64_t heads = 4, kvh = 2, d = 8;
  const double scale = 1.0 / std::sqrt(double(d));
  for (int64_t window : {0, 3}) {
    // Three sequences of different lengths (slots 2, 0, 3), prefilled one at a time, then
    // two decode steps: batched (one scatter, one masked attention) vs each alone.
    KvCache batched({0}, 4, kvh, 16, d, at::kFloat, at::kCPU, /*spare_slot=*/true);
    KvCache alone({0}, 4, kvh, 16, d, at::kFloat, at::kCPU);
    const std::vector<std::pair<int64_t, int64_t>> seqs = {{2, 5}, {0, 1}, {3, 9}};  // (slot, prompt length)
    for (const auto& [slot, len] : seqs) {
      at::Tensor q = at::randn({len, heads, d}), k = at::randn({len, kvh, d}), v = at::randn({len, kvh, d});
      batched.attend(0, q, k, v, Batch{{{slot, 0, len}}}, scale, window);
      alone.attend(0, q, k, v, Batch{{{slot, 0, len}}}, scale, window);
    }
    for (int64_t step = 0; step < 2; ++step) {
      at::Tensor q = at::randn({3, heads, d}), k = at::randn({3, kvh, d}), v = at::randn({3, kvh, d});
      Batch b;
      for (const auto& [slot, len] : seqs) b.seqs.push_back({slot, len + step, 1});
      const DecodeIndex di = batched.decode_index(b, at::kCPU, /*span=*/step == 0 ? 0 : 16);  // exact, then padded
      ASSERT_TRUE(di.defined());
      EXPECT_EQ(di.span, step == 0 ? 10 : 16);
      at::Tensor got = batched.attend_decode(0, q, k, v, di, scale, window);
      for (int64_t i = 0; i < 3; ++i) {
        at::Tensor want = alone.attend(0, q.narrow(0, i, 1), k.narrow(0, i, 1), v.narrow(0, i, 1),
                                       Batch{{b.seqs[static_cast<size_t>(i)]}}, scale, window);
        EXPECT_TRUE(at::allclose(got.narrow(0, i, 1), want, 1e-5, 1e-5)) << "window " << window << " row " << i;
      }
    }
  }
  EXPECT_FALSE(KvCache({0}, 2, 1, 4, 2, at::kFloat, at::kCPU).decode_index(Batch{{{0, 0, 2}}}, at::kCPU).defined());
  EXPECT_EQ(KvCache({0}, 2, 1, 4, 2, at::kFloat, at::kCPU, true).spare_slot(), 2);
}

// Soft-capping and ALiBi (ScoreMods) agree between the per-sequence and the batched
// decode path, with GQA, and change the result (so they are applied at all).
TEST(KvCache, ScoreModsAgreeOnBothPaths) {
  at::manual_seed(3);
  const int64_t heads = 4, kvh = 2, d = 8, len = 6;
  const double scale = 1.0 / std::sqrt(double(d));
  const ScoreMods mods{1.5, at::tensor({0.5f, 0.25f, 0.125f, 0.0625f})};
  KvCache a({0}, 2, kvh, 16, d, at::kFloat, at::kCPU), b({0}, 2, kvh, 16, d, at::kFloat, at::kCPU);
  at::Tensor q = at::randn({len + 1, heads, d}) * 3, k = at::randn({len + 1, kvh, d}) * 3,
             v = at::randn({len + 1, kvh, d});
  a.attend(0, q.narrow(0, 0, len), k.narrow(0, 0, len), v.narrow(0, 0, len), Batch{{{1, 0, len}}}, scale, 0, mods);
  b.attend(0, q.narrow(0, 0, len), k.narrow(0, 0, len), v.narrow(0, 0, len), Batch{{{1, 0, len}}}, scale, 0, mods);
  const Batch step{{{1, len, 1}}};
  const at::Tensor one =
      a.attend(0, q.narrow(0, len, 1), k.narrow(0, len, 1), v.narrow(0, len, 1), step, scale, 0, mods);
  const at::Tensor batched = b.attend_decode(0, q.narrow(0, len, 1), k.narrow(0, len, 1), v.narrow(0, len, 1),
                                             b.decode_index(step, at::kCPU), scale, 0, mods);
  EXPECT_TRUE(at::allclose(one, batched, 1e-5, 1e-5));
  KvCache plain({0}, 2, kvh, 16, d, at::kFloat, at::kCPU);
  const at::Tensor none = plain.attend(0, q, k, v, Batch{{{1, 0, len + 1}}}, scale, 0).narrow(0, len, 1);
  EXPECT_FALSE(at::allclose(one, none, 1e-3, 1e-3));
}

// On a GPU, batched decode goes through the in-place kernels (attention_kernels.h):
// the same result as the ATen path on the CPU, for every head size, GQA group, window,
// score modification and a span long enough to be split over several blocks, in float32
// (1e-5) and bf16 (the CPU computing the bf16 inputs in float32; 2e-2).
TEST(KvCache, DecodeKernelsMatchTheAtenPathOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  at::manual_seed(4);
  struct Shape {
    int64_t heads, kvh, d;
  };
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    for (const Shape& sh : {Shape{4, 4, 64}, Shape{8, 2, 128}, Shape{14, 2, 128}, Shape{8, 1, 256}}) {
      for (int64_t window : {0, 37}) {
        for (bool mods_on : {false, true}) {
          const double scale = 1.0 / std::sqrt(double(sh.d));
          ScoreMods mods;
          if (mods_on) mods = {30.0, (at::rand({sh.heads}) * 0.1).to(at::kFloat)};
          ScoreMods gpu_mods = mods;
          if (mods_on) gpu_mods.alibi = mods.alibi.cuda();
          KvCache cpu({0}, 4, sh.kvh, 512, sh.d, at::kFloat, at::kCPU, true);
          KvCache gpu({0}, 4, sh.kvh, 512, sh.d, t, at::kCUDA, true);
          const std::vector<std::pair<int64_t, int64_t>> seqs = {{2, 300}, {0, 1}, {3, 45}};  // (slot, prompt)
          for (const auto& [slot, len] : seqs) {
            const at::Tensor k = at::randn({len, sh.kvh, sh.d}).to(t), v = at::randn({len, sh.kvh, sh.d}).to(t);
            const at::Tensor q = at::randn({len, sh.heads, sh.d}).to(t);
            cpu.attend(0, q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), Batch{{{slot, 0, len}}}, scale, window);
            gpu.attend(0, q.cuda(), k.cuda(), v.cuda(), Batch{{{slot, 0, len}}}, scale, window);
          }
          for (int64_t step = 0; step < 2; ++step) {
            const at::Tensor q = (at::randn({3, sh.heads, sh.d}) * 2).to(t);
            const at::Tensor k = at::randn({3, sh.kvh, sh.d}).to(t), v = at::randn({3, sh.kvh, sh.d}).to(t);
            Batch b;
            for (const auto& [slot, len] : seqs) b.seqs.push_back({slot, len + step, 1});
            const at::Tensor want = cpu.attend_decode(0, q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat),
                                                      cpu.decode_index(b, at::kCPU, 320), scale, window, mods);
            const at::Tensor got = gpu.attend_decode(0, q.cuda(), k.cuda(), v.cuda(),
                                                     gpu.decode_index(b, at::kCUDA, 320), scale, window, gpu_mods)
                                       .cpu()
                                       .to(at::kFloat);
            const double err = (got - want).abs().max().item<double>();
            EXPECT_LE(err, t == at::kFloat ? 1e-5 : 2e-2)
                << t << " heads " << sh.heads << "/" << sh.kvh << " d " << sh.d << " window " << window << " mods "
                << mods_on << " step " << step;
          }
        }
      }
    }
  }
}

// Many sequences leave one split a KV head, so each warp takes more keys than it keeps in
// flight (attention_kernels.cu, kPrefetch: 8 for bf16 rows of 128, 4 for float32) and
// refills its ring as it goes: still the ATen path's result.
TEST(KvCache, DecodeKernelsRefillTheirKeysInFlight) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  at::manual_seed(5);
  const int64_t heads = 8, kvh = 8, d = 128, seqs = 24, span = 384;
  const double scale = 1.0 / std::sqrt(double(d));
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    KvCache cpu({0}, seqs, kvh, span, d, at::kFloat, at::kCPU, true);
    KvCache gpu({0}, seqs, kvh, span, d, t, at::kCUDA, true);
    Batch b;
    for (int64_t s = 0; s < seqs; ++s) {
      const int64_t len = 200 + 7 * s;  // 200..361 keys: 12 to 23 a warp of 16
      const at::Tensor k = at::randn({len, kvh, d}).to(t), v = at::randn({len, kvh, d}).to(t);
      const at::Tensor q = at::randn({len, heads, d}).to(t);
      cpu.attend(0, q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), Batch{{{s, 0, len}}}, scale, 0);
      gpu.attend(0, q.cuda(), k.cuda(), v.cuda(), Batch{{{s, 0, len}}}, scale, 0);
      b.seqs.push_back({s, len, 1});
    }
    const at::Tensor q = (at::randn({seqs, heads, d}) * 2).to(t);
    const at::Tensor k = at::randn({seqs, kvh, d}).to(t), v = at::randn({seqs, kvh, d}).to(t);
    const at::Tensor want = cpu.attend_decode(0, q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat),
                                              cpu.decode_index(b, at::kCPU, span), scale, 0, {});
    const at::Tensor got =
        gpu.attend_decode(0, q.cuda(), k.cuda(), v.cuda(), gpu.decode_index(b, at::kCUDA, span), scale, 0, {})
            .cpu()
            .to(at::kFloat);
    const double err = (got - want).abs().max().item<double>();
    std::printf("[ attention ] %d sequences, 200-361 keys, %s: max |diff| %.3g\n", static_cast<int>(seqs),
                t == at::kFloat ? "float32" : "bf16", err);
    EXPECT_LE(err, t == at::kFloat ? 1e-5 : 2e-2) << t;
  }
}

// RoPE folded into the KV store's kernel gives what rotating q and k first gives, bit
// for bit (same rounding), with q/k/v read in place from one fused projection's output
// (strided rows); a CPU cache declines it and writes nothing.
TEST(KvCache, RotaryDecodeEqualsRotatingFirst) {
  at::manual_seed(6);
  const int64_t heads = 8, kvh = 2, d = 128, B = 3;
  const double scale = 1.0 / std::sqrt(double(d));
  const std::vector<std::pair<int64_t, int64_t>> seqs = {{2, 40}, {0, 1}, {3, 17}};  // (slot, prompt)
  Batch b;
  for (const auto& [slot, len] : seqs) b.seqs.push_back({slot, len, 1});
  {
    KvCache cpu({0}, 4, kvh, 64, d, at::kFloat, at::kCPU, true);
    const at::Tensor q = at::randn({B, heads, d}), k = at::randn({B, kvh, d}), cs = at::randn({B, d});
    EXPECT_FALSE(cpu.attend_decode_rotary(0, q, k, k, cs, cs, cpu.decode_index(b, at::kCPU, 64), scale, 0).defined());
    EXPECT_EQ(cpu.read(0, 2, 40, 41).first.abs().sum().item<double>(), 0.0);
  }
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  // A short span (one block a KV head, 16 warps) and a long one split over blocks (the
  // keys of position pos written by a later split), with 16-warp blocks and with a GQA
  // group too large for them (4 warps).
  struct Case {
    int64_t heads, kvh, max_seq;
    std::vector<std::pair<int64_t, int64_t>> seqs;
  };
  const std::vector<std::pair<int64_t, int64_t>> longer = {{2, 300}, {0, 1}, {3, 45}};
  for (const Case& c : {Case{heads, kvh, 64, seqs}, Case{heads, kvh, 512, longer}, Case{14, 2, 512, longer}}) {
    Batch cb;
    for (const auto& [slot, len] : c.seqs) cb.seqs.push_back({slot, len, 1});
    for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
      KvCache fused({0}, 4, c.kvh, c.max_seq, d, t, at::kCUDA, true),
          apart({0}, 4, c.kvh, c.max_seq, d, t, at::kCUDA, true);
      for (const auto& [slot, len] : c.seqs) {
        const at::Tensor k = at::randn({len, c.kvh, d}).to(t).cuda(), v = at::randn({len, c.kvh, d}).to(t).cuda();
        const at::Tensor q = at::randn({len, c.heads, d}).to(t).cuda();
        fused.attend(0, q, k, v, Batch{{{slot, 0, len}}}, scale, 0);
        apart.attend(0, q, k, v, Batch{{{slot, 0, len}}}, scale, 0);
      }
      const at::Tensor qkv = at::randn({B, (c.heads + 2 * c.kvh) * d}).to(t).cuda();  // [B, q | k | v]
      const at::Tensor q = qkv.narrow(1, 0, c.heads * d).view({B, c.heads, d});
      const at::Tensor k = qkv.narrow(1, c.heads * d, c.kvh * d).view({B, c.kvh, d});
      const at::Tensor v = qkv.narrow(1, (c.heads + c.kvh) * d, c.kvh * d).view({B, c.kvh, d});
      const at::Tensor angle = at::rand({B, d}) * 6;
      const at::Tensor cos = angle.cos().to(t).cuda(), sin = angle.sin().to(t).cuda();
      const int64_t span = c.max_seq == 64 ? 64 : 320;
      const at::Tensor got =
          fused.attend_decode_rotary(0, q, k, v, cos, sin, fused.decode_index(cb, at::kCUDA, span), scale, 0);
      ASSERT_TRUE(got.defined()) << t;
      const at::Tensor want = apart.attend_decode(0, apply_rope(q, cos, sin), apply_rope(k, cos, sin), v,
                                                  apart.decode_index(cb, at::kCUDA, span), scale, 0);
      EXPECT_TRUE(at::equal(got, want)) << t << " heads " << c.heads << " span " << span << " max |diff| "
                                        << (got - want).abs().max().item<double>();
      for (const auto& [slot, len] : c.seqs) {
        EXPECT_TRUE(at::equal(fused.read(0, slot, 0, len + 1).first, apart.read(0, slot, 0, len + 1).first)) << t;
        EXPECT_TRUE(at::equal(fused.read(0, slot, 0, len + 1).second, apart.read(0, slot, 0, len + 1).second)) << t;
      }
    }
  }
}

// The same for a step that is not a pure decode step: a prompt from position 0 (the
// fused causal kernel), a chunk continuing a prompt and one decode token, in one batch.
// The row index names each row's slot and position; a CPU cache declines the fused
// store and writes nothing.
TEST(KvCache, RotaryPrefillEqualsRotatingFirst) {
  at::manual_seed(7);
  const int64_t heads = 8, kvh = 2, d = 128;
  const double scale = 1.0 / std::sqrt(double(d));
  const Batch b{{{1, 0, 9}, {3, 5, 4}, {0, 20, 1}}};  // (slot, start, tokens)
  const int64_t T = 14;
  {
    KvCache cpu({0}, 4, kvh, 64, d, at::kFloat, at::kCPU);
    const RowIndex rows = cpu.row_index(b, at::kCPU);
    EXPECT_TRUE(at::equal(rows.slots, at::tensor({1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 0}, at::kLong)));
    EXPECT_TRUE(at::equal(rows.pos, at::tensor({0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8, 20}, at::kLong)));
    const at::Tensor q = at::randn({T, heads, d}), k = at::randn({T, kvh, d}), cs = at::randn({T, d});
    EXPECT_FALSE(cpu.attend_rotary(0, q, k, k, cs, cs, rows, b, scale, 0).defined());
    EXPECT_EQ(cpu.read(0, 1, 0, 9).first.abs().sum().item<double>(), 0.0);
    EXPECT_THROW_WITH(cpu.row_index(Batch{{{0, 60, 5}}}, at::kCPU), c10::Error, "past max_seq_len 64");
  }
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    KvCache fused({0}, 4, kvh, 64, d, t, at::kCUDA), apart({0}, 4, kvh, 64, d, t, at::kCUDA);
    for (const auto& [slot, len] : std::vector<std::pair<int64_t, int64_t>>{{3, 5}, {0, 20}}) {  // earlier steps
      const at::Tensor k = at::randn({len, kvh, d}).to(t).cuda(), q = at::randn({len, heads, d}).to(t).cuda();
      fused.attend(0, q, k, k, Batch{{{slot, 0, len}}}, scale, 0);
      apart.attend(0, q, k, k, Batch{{{slot, 0, len}}}, scale, 0);
    }
    const at::Tensor qkv = at::randn({T, (heads + 2 * kvh) * d}).to(t).cuda();  // [T, q | k | v]
    const at::Tensor q = qkv.narrow(1, 0, heads * d).view({T, heads, d});
    const at::Tensor k = qkv.narrow(1, heads * d, kvh * d).view({T, kvh, d});
    const at::Tensor v = qkv.narrow(1, (heads + kvh) * d, kvh * d).view({T, kvh, d});
    const at::Tensor angle = at::rand({T, d}) * 6;
    const at::Tensor cos = angle.cos().to(t).cuda(), sin = angle.sin().to(t).cuda();
    const at::Tensor got = fused.attend_rotary(0, q, k, v, cos, sin, fused.row_index(b, at::kCUDA), b, scale, 0);
    ASSERT_TRUE(got.defined()) << t;
    const at::Tensor want = apart.attend(0, apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, b, scale, 0);
    EXPECT_TRUE(at::equal(got, want)) << t << " max |diff| " << (got - want).abs().max().item<double>();
    for (const auto& s : b.seqs) {
      const int64_t end = s.start_pos + s.n_tokens;
      EXPECT_TRUE(at::equal(fused.read(0, s.slot, 0, end).first, apart.read(0, s.slot, 0, end).first)) << t;
      EXPECT_TRUE(at::equal(fused.read(0, s.slot, 0, end).second, apart.read(0, s.slot, 0, end).second)) << t;
    }
  }
}

TEST(KvCache, BoundsAreChecked) {
  KvCache kv({0}, 2, 1, 4, 2, at::kFloat, at::kCPU);
  EXPECT_EQ(kv.bytes(), 2u * 2 * 1 * 4 * 2 * sizeof(float));
  at::Tensor x = at::zeros({1, 1, 2});
  EXPECT_THROW_WITH(kv.attend(0, x, x, x, Batch{{{2, 0, 1}}}, 1.0, 0), c10::Error, "KV slot 2 out of range");
  EXPECT_THROW_WITH(kv.attend(0, x, x, x, Batch{{{0, 4, 1}}}, 1.0, 0), c10::Error, "past max_seq_len 4");
  EXPECT_THROW_WITH(kv.attend(3, x, x, x, Batch{{{0, 0, 1}}}, 1.0, 0), c10::Error, "layer 3 has no KV cache");
  EXPECT_THROW_WITH(kv.decode_index(Batch{{{2, 0, 1}}}, at::kCPU), c10::Error, "KV slot 2 out of range");
  EXPECT_THROW_WITH(kv.decode_index(Batch{{{0, 4, 1}}}, at::kCPU), c10::Error, "past max_seq_len 4");
  EXPECT_THROW_WITH(kv.decode_index(Batch{{{0, 1, 1}}}, at::kCPU, 1), c10::Error, "decode span 1 outside [2, 4]");
}

// store()/read(): what layers that attend by themselves (T5's) use.
TEST(KvCache, StoreThenReadPositions) {
  KvCache kv({1}, 2, 2, 8, 4, at::kFloat, at::kCPU);
  at::manual_seed(4);
  const at::Tensor k = at::randn({3, 2, 4}), v = at::randn({3, 2, 4});  // [n, kv_heads, head_dim]
  kv.store(1, 1, 2, k, v);                                              // slot 1, positions 2..4
  const auto [keys, vals] = kv.read(1, 1, 2, 5);
  EXPECT_TRUE(at::equal(keys, k.transpose(0, 1)));  // [kv_heads, n, head_dim]
  EXPECT_TRUE(at::equal(vals, v.transpose(0, 1)));
  EXPECT_TRUE(at::equal(kv.read(1, 0, 2, 5).first, at::zeros({2, 3, 4})));  // slot 0 untouched
  EXPECT_THROW_WITH(kv.store(1, 1, 6, k, v), c10::Error, "would reach 9", "past max_seq_len 8");
  EXPECT_THROW_WITH(kv.store(1, 2, 0, k, v), c10::Error, "KV slot 2 out of range");
  EXPECT_THROW_WITH(kv.read(1, 0, 4, 9), c10::Error, "KV positions [4, 9)");
  EXPECT_THROW_WITH(kv.read(0, 0, 0, 1), c10::Error, "layer 0 has no KV cache");
}

TEST(KvCache, CopyPrefixCopiesOnlyThePrefixOfOneLayer) {
  KvCache kv({2, 5}, 3, 2, 8, 4, at::kFloat, at::kCPU);
  at::manual_seed(3);
  const at::Tensor x = at::randn({6, 2, 4});
  kv.attend(2, x, x, x, Batch{{{0, 0, 6}}}, 1.0, 0);  // slot 0, positions 0..5 of layer 2
  kv.copy_prefix(2, 0, 2, 4);
  // Slot 2 now answers a query over its first 4 positions exactly as slot 0 does.
  const at::Tensor q = at::randn({1, 2, 4});
  const at::Tensor k = x.narrow(0, 4, 1);
  const at::Tensor a = kv.attend(2, q, k, k, Batch{{{0, 4, 1}}}, 1.0, 0);
  const at::Tensor b = kv.attend(2, q, k, k, Batch{{{2, 4, 1}}}, 1.0, 0);
  EXPECT_TRUE(at::equal(a, b));
  // Slot 1 was left alone (empty): attending there differs.
  const at::Tensor c = kv.attend(2, q, k, k, Batch{{{1, 4, 1}}}, 1.0, 0);
  EXPECT_FALSE(at::equal(a, c));
  EXPECT_THROW_WITH(kv.copy_prefix(3, 0, 1, 2), c10::Error, "no layer 3");
  EXPECT_THROW_WITH(kv.copy_prefix(2, 0, 0, 2), c10::Error, "cannot copy KV slot 0 to slot 0");
  EXPECT_THROW_WITH(kv.copy_prefix(2, 0, 3, 2), c10::Error, "cannot copy KV slot 0 to slot 3");
  EXPECT_THROW_WITH(kv.copy_prefix(2, 0, 1, 9), c10::Error, "cannot copy 9 positions");
}

}  // namespace
}  // namespace cascade::stage
