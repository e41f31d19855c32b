#include <gtest/gtest.h>

#include <algorithm>
#include <tuple>

#include "planner/plan.h"
#include "tests/plan_models.h"
#include "tests/test_util.h"

namespace cascade::planner {
namespace {

using namespace test_models;

TEST(CostModel, AddsBytesOverRatesAndHops) {
  // Everything on the CPU: the step is its bytes over the CPU's rate plus two hops.
  PlanRequest r = request(model(4, 100 * MiB, 10 * MiB), {{"cpu", 8000 * MiB}});
  r.cpu_compute = 1e9;
  const Plan p = make_plan(r);
  const double bytes = 4 * 100 * MiB + 10 * MiB + 128;  // the embedding's lookup costs nothing
  EXPECT_NEAR(p.predicted_step_s, bytes / 1e9 + 2 * kHopSeconds, 1e-9);
  // A memory bus slower than the CPU's rate (host_read) sets the step instead.
  PlanRequest bus = r;
  bus.host_read = 0.5e9;
  EXPECT_NEAR(make_plan(bus).predicted_step_s, bytes / 0.5e9, 1e-9);
  // Streamed modules whose copies take longer than everything else: the copies set the pace.
  PlanRequest s = request(model(6, 100 * MiB, 10 * MiB), {{"cuda:0", 500 * MiB}, {"cpu", 4000 * MiB}});
  s.offload_compute = "cuda:0";
  s.pinned_h2d = 1e9;
  const Plan q = make_plan(s);
  uint64_t streamed = 0;
  for (size_t i = 0; i < q.module_device.size(); ++i)
    if (q.module_device[i].str() == "cpu:0") streamed += s.model.modules[i].weight_bytes();
  EXPECT_GT(q.predicted_step_s, static_cast<double>(streamed) / 1e9);
  EXPECT_LT(q.predicted_step_s, static_cast<double>(streamed) / 1e9 * 1.05);
  // A hybrid's CPU stage and copies share the bus: with it slower than both, the step is
  // every offloaded byte over it, whichever side reads them.
  PlanRequest h = s;
  h.offload_compute = "cpu+cuda:0";
  h.streamed_share = 0.5;
  h.cpu_compute = 1e9;
  h.host_read = 0.25e9;
  const Plan hp = make_plan(h);
  double off = 0;
  for (size_t i = 0; i < hp.module_device.size(); ++i)
    if (hp.module_device[i].str() == "cpu:0" && h.model.modules[i].kind != ModuleKind::kEmbedding)
      off += static_cast<double>(h.model.modules[i].weight_bytes());
  EXPECT_GT(off, 0);
  EXPECT_NEAR(hp.predicted_step_s, off / 0.25e9, 1e-9);
}

// The disk tier of a stage that streams: its reads run ahead into the staging buffers,
// overlapping the copies of the modules before; with one buffer each disk module's read
// waits for the copy before it, so reads and copies run in series.
TEST(CostModel, OverlapsDiskReadsWithCopiesAsFarAsTheStagingBuffersLet) {
  // cpu: 650 MiB for weights beside the host's four 100 MiB staging buffers.
  PlanRequest r = request(model(16, 100 * MiB, 10 * MiB), {{"cuda:0", 500 * MiB}, {"cpu", 1050 * MiB}, {"disk", {}}});
  r.offload_compute = "cuda:0";
  r.pinned_h2d = 1e9;
  r.disk_read = 1e9;
  r.gpu_compute = 1e15;
  const auto tier_bytes = [&](const Plan& p, const char* tier) {
    double b = 0;
    for (size_t i = 0; i < p.module_device.size(); ++i)
      if (p.module_device[i].str() == tier) b += static_cast<double>(r.model.modules[i].weight_bytes());
    return b;
  };
  const Plan four = make_plan(r);
  const double pinned = tier_bytes(four, "cpu:0"), disk = tier_bytes(four, "disk");
  ASSERT_GE(pinned, 5 * 100 * MiB);
  ASSERT_GE(disk, 4 * 100 * MiB);
  // Four buffers: the copies set the pace (reads as fast, done ahead).
  EXPECT_NEAR(four.predicted_step_s, (pinned + disk) / 1e9, 0.02 * (pinned + disk) / 1e9) << four.offload_choice;
  // One buffer: every disk module is read, then copied.
  r.staging_buffers = 1;
  const Plan one = make_plan(r);
  ASSERT_GE(tier_bytes(one, "disk"), 100 * MiB);
  EXPECT_GT(one.predicted_step_s, (tier_bytes(one, "cpu:0") + 1.9 * tier_bytes(one, "disk")) / 1e9);
  // Slow reads set the pace whatever the buffers.
  r.staging_buffers = 4;
  r.disk_read = 0.1e9;
  EXPECT_NEAR(make_plan(r).predicted_step_s, disk / 0.1e9, 0.1 * disk / 0.1e9);
}

// A hybrid of 16 layers, three quarters streamed, whose CPU modules each take as long
// as three copies (MoreSlotsLetCopiesRunThroughTheCpuModules says why that needs slots).
PlanRequest hybrid_with_slow_cpu() {
  PlanRequest r = request(model(16, 100 * MiB, 10 * MiB), {{"cuda:0", 700 * MiB}, {"cpu", 8000 * MiB}});
  r.offload_compute = "cpu+cuda:0";
  r.streamed_share = 0.75;
  r.pinned_h2d = 1e9;
  r.gpu_compute = 1e15;
  r.cpu_compute = 1e9 / 3;
  return r;
}

// A hybrid whose CPU modules each take as long as three copies: with two slots only the
// next streamed module copies while the CPU computes one, so copies and CPU compute
// mostly add up; with four the copies run three modules ahead, through the CPU's
// modules, and the step nears the longer of the two.
TEST(CostModel, MoreSlotsLetCopiesRunThroughTheCpuModules) {
  PlanRequest r = hybrid_with_slow_cpu();
  const auto step_and_sides = [&](int slots) {
    r.stream_slots = slots;
    const Plan p = make_plan(r);
    double copies = 0, cpu = 0;  // seconds of each side's modules, alone
    for (size_t k = 0; k < p.route_segments.size(); ++k) {
      const bool on_gpu = p.stages[static_cast<size_t>(p.route_ranks[k] - 1)].device.is_gpu();
      for (int64_t i = p.route_segments[k].begin; i < p.route_segments[k].end; ++i) {
        const auto& m = r.model.modules[static_cast<size_t>(i)];
        if (p.module_device[static_cast<size_t>(i)].is_gpu() || m.kind == ModuleKind::kEmbedding) continue;
        (on_gpu ? copies : cpu) += static_cast<double>(m.weight_bytes()) / (on_gpu ? r.pinned_h2d : r.cpu_compute);
      }
    }
    return std::make_tuple(p.predicted_step_s, copies, cpu);
  };
  r.stream_slots = 3;
  EXPECT_EQ(make_plan(r).stream_slots, 3);  // what the stages are told to allocate
  for (const int slots : {1, 9})            // fewer than a double buffer, more than a stage allocates
    EXPECT_THROW_WITH((r.stream_slots = slots, make_plan(r)), PlanError, "stream_slots", std::to_string(slots));
  const auto [two, copies2, cpu2] = step_and_sides(2);
  const auto [four, copies4, cpu4] = step_and_sides(4);
  ASSERT_GT(copies2, 0);
  ASSERT_GT(cpu2, 0);
  EXPECT_GT(two, 0.8 * (copies2 + cpu2)) << copies2 << " s of copies, " << cpu2 << " s of CPU";
  EXPECT_LT(four, 1.2 * std::max(copies4, cpu4)) << copies4 << " s of copies, " << cpu4 << " s of CPU";
  EXPECT_LT(four, two);
}

// Streamed modules that all fit the slots at once (a hybrid that streams few) are
// copied once, then stay: the step costs the CPU's modules only, though each copy
// would take ~0.1 s. More than the slots are copied every step: the copy engine's total
// sets the step (the CPU's modules take no time here).
TEST(CostModel, ModulesThatFitTheSlotsAreCopiedOnce) {
  PlanRequest r = request(model(12, 100 * MiB, 10 * MiB), {{"cuda:0", 500 * MiB}, {"cpu", 8000 * MiB}});
  r.offload_compute = "cpu+cuda:0";
  r.pinned_h2d = 1e9;
  r.gpu_compute = 1e15;
  r.cpu_compute = 1e12;  // the CPU's modules take no time
  r.stream_slots = 3;
  for (const double share : {0.2, 0.6}) {
    r.streamed_share = share;
    const Plan p = make_plan(r);
    int streamed = 0;
    double copies = 0;  // seconds
    for (size_t k = 0; k < p.route_segments.size(); ++k)
      if (p.stages[static_cast<size_t>(p.route_ranks[k] - 1)].device.is_gpu())
        for (int64_t i = p.route_segments[k].begin; i < p.route_segments[k].end; ++i)
          if (!p.module_device[static_cast<size_t>(i)].is_gpu()) {
            ++streamed;
            copies += static_cast<double>(r.model.modules[static_cast<size_t>(i)].weight_bytes()) / r.pinned_h2d;
          }
    if (share < 0.5) {
      EXPECT_GE(streamed, 1);
      EXPECT_LE(streamed, 3);
      EXPECT_LT(p.predicted_step_s, 0.01) << streamed << " streamed";
    } else {  // more than the slots: each copied every step
      EXPECT_GT(streamed, 3);
      EXPECT_GE(p.predicted_step_s, copies) << streamed << " streamed";
      EXPECT_LT(p.predicted_step_s, 1.05 * copies) << streamed << " streamed";
    }
  }
}

// Where the CPU computes beside a weight stream, its modules cost their bytes over the
// rate measured beside copies; with nothing streamed, over the rate alone.
TEST(CostModel, SlowsTheCpuBesideCopies) {
  PlanRequest r = request(model(12, 100 * MiB, 10 * MiB), {{"cuda:0", 500 * MiB}, {"cpu", 8000 * MiB}});
  r.offload_compute = "cpu+cuda:0";
  r.streamed_share = 0.5;
  r.cpu_compute = 1e9;
  r.pinned_h2d = 1e12;  // copies take no time: the step is the CPU's part
  r.gpu_compute = 1e15;
  const double alone = make_plan(r).predicted_step_s;
  r.cpu_compute_shared = 0.5e9;
  EXPECT_NEAR(make_plan(r).predicted_step_s, 2 * alone, 0.02 * alone);
  r.offload_compute = "cpu";  // nothing streamed: the rate alone
  r.streamed_share.reset();
  const double cpu_only = make_plan(r).predicted_step_s;
  r.cpu_compute_shared = 0;
  EXPECT_EQ(make_plan(r).predicted_step_s, cpu_only);
}

// stream_slots "auto": the plan of 2 to kMostAutoSlots slots predicted fastest, and the
// choice says what each count predicted. Where copies run through CPU modules (as in
// MoreSlotsLetCopiesRunThroughTheCpuModules) more slots win; where the copies alone set
// the step, or nothing streams, two stay.
TEST(CostModel, AutoSlotsKeepThePlanPredictedFastest) {
  PlanRequest r = hybrid_with_slow_cpu();
  double fastest = 1e30;
  for (int s = config::kMinStreamSlots; s <= kMostAutoSlots; ++s)
    fastest = std::min(fastest, (r.stream_slots = s, make_plan(r)).predicted_step_s);
  r.stream_slots = config::kAutoStreamSlots;
  const Plan chosen = make_plan(r);
  EXPECT_GT(chosen.stream_slots, 2);
  EXPECT_DOUBLE_EQ(chosen.predicted_step_s, fastest);
  EXPECT_NE(chosen.offload_choice.find(std::to_string(chosen.stream_slots) + " GPU slots"), std::string::npos)
      << chosen.offload_choice;
  EXPECT_EQ(chosen.devices.at("cuda:0").staging % static_cast<uint64_t>(chosen.stream_slots), 0u);
  // What `cascade bench` asks the model again, with the request still saying "auto":
  // the plan's slots count.
  EXPECT_DOUBLE_EQ(predicted_step_seconds(r, chosen), chosen.predicted_step_s);
  // Everything streamed with the CPU idle: the copy engine sets the step whatever the
  // slots, and each slot beyond two only keeps a module off the GPU.
  r.offload_compute = "cuda:0";
  r.streamed_share.reset();
  EXPECT_EQ(make_plan(r).stream_slots, 2) << make_plan(r).offload_choice;
  // Nothing streams: no slots to choose.
  r.offload_compute = "cpu";
  const Plan cpu = make_plan(r);
  EXPECT_EQ(cpu.stream_slots, 2);
  EXPECT_EQ(cpu.offload_choice.find("GPU slots"), std::string::npos) << cpu.offload_choice;
}

// At 16 tokens a CPU module is bound by arithmetic: in a step that streams it runs at
// cpu_flops_shared (measured beside copies), with nothing streamed at cpu_flops.
TEST(CostModel, SlowsTheCpusArithmeticBesideCopies) {
  PlanRequest r = request(model(12, 100 * MiB, 10 * MiB), {{"cuda:0", 500 * MiB}, {"cpu", 8000 * MiB}});
  r.offload_compute = "cpu+cuda:0";
  r.streamed_share = 0.5;
  r.max_batch = 16;
  r.cpu_compute = 1e12;  // reading weights takes no time: FLOPs set the CPU's part
  r.cpu_flops = 1e11;
  r.pinned_h2d = 1e12;
  r.gpu_compute = 1e15;
  const double alone = make_plan(r).predicted_step_s;
  r.cpu_flops_shared = 0.25e11;
  EXPECT_NEAR(make_plan(r).predicted_step_s, 4 * alone, 0.04 * alone);
  r.offload_compute = "cpu";
  r.streamed_share.reset();
  const double cpu_only = make_plan(r).predicted_step_s;
  r.cpu_flops_shared = 0;
  EXPECT_EQ(make_plan(r).predicted_step_s, cpu_only);
}

TEST(CostModel, ChargesACpuOnlyTheExpertsATokenReads) {
  // 8 layers; the GPU (700 MiB) holds the 100 MiB of attention, embedding and head and
  // three expert blocks of 161 MiB, so the CPU computes 5 blocks reading 41 MiB each
  // (router + 2 of 8 experts); streaming instead reserves a double buffer (322 MiB),
  // keeps one block and copies 7 whole: 1127 MiB against 205, 5.5x the bytes.
  PlanRequest r = request(moe_model(8, 10 * MiB, 20 * MiB), {{"cuda:0", 700 * MiB}, {"cpu", 8000 * MiB}});
  EXPECT_DOUBLE_EQ(r.model.modules[2].read_bytes(), 1.0 * MiB + 8 * 20 * MiB * 0.25);
  r.offload_compute = "auto";
  r.cpu_compute = r.pinned_h2d / 2;  // a CPU 2x slower than PCIe computes every block...
  const Plan p = make_plan(r);
  EXPECT_EQ(p.offload_compute, "cpu") << p.offload_choice;
  r.cpu_compute = r.pinned_h2d / 4;  // ...one 4x slower computes some while others stream...
  const Plan h = make_plan(r);
  EXPECT_EQ(h.offload_compute, "cpu+cuda:0") << h.offload_choice;
  r.cpu_compute = r.pinned_h2d / 16;  // ...one 16x slower none
  const Plan q = make_plan(r);
  EXPECT_EQ(q.offload_compute, "cuda:0") << q.offload_choice;
}

}  // namespace
}  // namespace cascade::planner
