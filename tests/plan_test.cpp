#include "planner/plan.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

#include "tests/plan_models.h"
#include "tests/test_util.h"

namespace cascade::planner {
namespace {

using namespace test_models;

std::vector<std::string> devices_of(const Plan& p) {
  std::vector<std::string> out;
  for (const auto& d : p.module_device) out.push_back(hf_device(d));
  return out;
}

TEST(Plan, EverythingFitsOnOneGpu) {
  const Plan p = make_plan(request(model(4, 10 * MiB, 20 * MiB), {{"cuda:0", 1000 * MiB}, {"cpu", 1000 * MiB}}));
  for (const auto& d : devices_of(p)) EXPECT_EQ(d, "0");
  ASSERT_EQ(p.stages.size(), 1u);
  EXPECT_EQ(p.stages[0].device.str(), "cuda:0");
  ASSERT_EQ(p.edges.size(), 2u);                              // coordinator -> rank 1 -> coordinator
  EXPECT_EQ(p.devices.at("cuda:0").weights, 80 * MiB + 128);  // 3 layers + embedding + head + norm
}

TEST(Plan, SequentialSpillsGpuGpuCpuLikeTheAccelerateDocs) {
  // The accelerate docs' T0pp-style case: two small GPUs, then CPU.
  PlanRequest r =
      request(model(8, 100 * MiB, 50 * MiB), {{"cuda:0", 420 * MiB}, {"cuda:1", 420 * MiB}, {"cpu", 4096 * MiB}});
  r.strategy = config::Strategy::kSequential;
  const Plan p = make_plan(r);
  const auto d = devices_of(p);
  // accelerate: GPU 0 takes the embedding and three 100 MiB layers (the fourth would
  // pass 420 MiB), GPU 1 four layers, and the CPU the last layer, the norm and the head,
  // in order. Cascade leaves the embedding to the CPU (a token reads one of its rows), so
  // the GPUs hold one more layer and the norm, and the CPU computes the head.
  EXPECT_EQ(d, (std::vector<std::string>{"cpu", "0", "0", "0", "0", "1", "1", "1", "1", "1", "cpu"}));
  ASSERT_EQ(p.stages.size(), 3u);
  EXPECT_EQ(p.route_ranks, (std::vector<int>{1, 2, 3, 1}));
  EXPECT_EQ(p.edges[0].transport, Transport::kMpi);   // coordinator -> the embedding's stage
  EXPECT_EQ(p.edges[1].transport, Transport::kShm);   // CPU -> GPU
  EXPECT_EQ(p.edges[2].transport, Transport::kNccl);  // GPU -> GPU
  EXPECT_EQ(p.edges[3].transport, Transport::kShm);   // GPU -> CPU offload stage
  for (const auto& [name, u] : p.devices) {
    if (u.budget) {
      EXPECT_LE(u.total(), *u.budget) << name;
    }
  }
}

TEST(Plan, BalancedSpreadsLayersEvenlyAcrossGpus) {
  PlanRequest r =
      request(model(8, 100 * MiB, 50 * MiB), {{"cuda:0", 8000 * MiB}, {"cuda:1", 8000 * MiB}, {"cpu", 8000 * MiB}});
  r.strategy = config::Strategy::kBalanced;
  const Plan p = make_plan(r);
  int on0 = 0, on1 = 0;
  for (const auto& d : devices_of(p)) (d == "0" ? on0 : on1)++;
  EXPECT_GT(on0, 3);
  EXPECT_GT(on1, 3);
  EXPECT_EQ(p.devices.count("cpu:0") ? p.devices.at("cpu:0").weights : 0u, 0u);
}

TEST(Plan, BalancedLow0KeepsGpu0Light) {
  PlanRequest r =
      request(model(8, 100 * MiB, 50 * MiB), {{"cuda:0", 8000 * MiB}, {"cuda:1", 8000 * MiB}, {"cpu", 8000 * MiB}});
  r.strategy = config::Strategy::kBalancedLow0;
  const Plan p = make_plan(r);
  EXPECT_EQ(p.devices.at("cuda:0").weights, 0u);
  EXPECT_EQ(p.devices.at("cuda:1").weights, 900 * MiB + 128);
}

TEST(Plan, PipelineBalancesComputeNotBytes) {
  // A huge embedding costs bytes but no FLOPs: byte balancing would give GPU 0 fewer
  // layers; compute balancing splits the layers evenly.
  PlanRequest r = request(model(8, 100 * MiB, 800 * MiB), {{"cuda:0", 8000 * MiB}, {"cuda:1", 8000 * MiB}});
  r.strategy = config::Strategy::kBalanced;
  r.mode = config::Mode::kPipeline;
  r.model.modules.back().flops_per_token = 0;  // make the head free too, to keep the arithmetic plain
  const Plan p = make_plan(r);
  const auto d = devices_of(p);
  EXPECT_EQ(std::count(d.begin() + 1, d.begin() + 9, "0"), 4);
  EXPECT_EQ(std::count(d.begin() + 1, d.begin() + 9, "1"), 4);
}

TEST(Plan, TiedEmbeddingIsChargedToBothStages) {
  PlanRequest r = request(model(4, 10 * MiB, 30 * MiB, /*tied=*/true), {{"cpu:0", 60 * MiB}, {"cpu:1", 1000 * MiB}});
  r.strategy = config::Strategy::kSequential;
  const Plan p = make_plan(r);
  EXPECT_EQ(hf_device(p.module_device.front()), "cpu");
  EXPECT_EQ(hf_device(p.module_device.back()), "cpu:1");
  EXPECT_GE(p.devices.at("cpu:0").weights, 30 * MiB);
  EXPECT_GE(p.devices.at("cpu:1").weights, 30 * MiB);  // the head's copy of the embedding
  // On one device the tied tensor counts once.
  const Plan one = make_plan(request(model(4, 10 * MiB, 30 * MiB, true), {{"cpu", 1000 * MiB}}));
  EXPECT_EQ(one.devices.at("cpu:0").weights, 4 * 10 * MiB + 30 * MiB + 128);
}

TEST(Plan, KvCacheIsCharged) {
  PlanRequest r = request(model(4, 10 * MiB, 10 * MiB, false, /*kv_per_token=*/4096), {{"cpu", 10000 * MiB}});
  r.max_batch = 8;
  r.max_seq_len = 1024;
  const Plan p = make_plan(r);
  EXPECT_EQ(p.devices.at("cpu:0").kv, 4ull * 4096 * 8 * 1024);
}

TEST(Plan, ImpossiblePlanGivesTheNumbers) {
  PlanRequest r = request(model(4, 300 * MiB, 10 * MiB), {{"cuda:0", 200 * MiB}, {"cpu", 250 * MiB}});
  EXPECT_THROW_WITH(make_plan(r), PlanError, "model.layers.0 needs 300.00 MiB", "largest compute budget is 250.00 MiB",
                    "add \"disk\"");
}

TEST(Plan, DiskTakesWhatDoesNotFitAndTheOffloadStageServesIt) {
  PlanRequest r = request(model(6, 100 * MiB, 10 * MiB), {{"cpu", 400 * MiB}, {"disk", std::nullopt}});
  const Plan p = make_plan(r);
  EXPECT_EQ(hf_device(p.module_device.back()), "disk");
  ASSERT_EQ(p.stages.size(), 1u);  // cpu:0 and disk are one offload stage
  EXPECT_EQ(p.stages[0].tiers.size(), 2u);
  EXPECT_GT(p.devices.at("disk").weights, 0u);
}

TEST(Plan, StreamingToAGpuReservesTwoCopiesOfTheLargestOffloadedModule) {
  PlanRequest r = request(model(6, 100 * MiB, 10 * MiB), {{"cuda:0", 500 * MiB}, {"cpu", 4000 * MiB}});
  r.offload_compute = "cuda:0";
  const Plan p = make_plan(r);
  EXPECT_EQ(p.devices.at("cuda:0").staging, 200 * MiB);
  EXPECT_LE(p.devices.at("cuda:0").total(), 500 * MiB);
  EXPECT_EQ(p.stages.back().device.str(), "cuda:0");  // the offload stage computes on the GPU...
  EXPECT_EQ(p.edges[1].transport, Transport::kShm);   // ...but talks to the GPU stage over shm
}

TEST(Plan, StreamedLayersKeepTheirKvCacheOnTheGpu) {
  // 20 MiB of KV per layer: with the GPU filled by resident layers first, the streamed
  // layers' KV would not fit (the H100 run at max_batch 16 failed so); the planner makes room.
  PlanRequest r = request(model(12, 100 * MiB, 10 * MiB, false, /*kv_per_token=*/20 * 1024),
                          {{"cuda:0", 700 * MiB}, {"cpu", 8000 * MiB}});
  r.offload_compute = "cuda:0";
  r.max_seq_len = 1024;
  const Plan p = make_plan(r);
  EXPECT_EQ(p.offload_compute, "cuda:0");
  const DeviceUsage& g = p.devices.at("cuda:0");
  EXPECT_LE(g.total(), 700 * MiB);
  EXPECT_EQ(g.kv, 12 * 20 * MiB);  // every layer's KV is on the GPU, streamed or not
  EXPECT_EQ(g.staging, 200 * MiB);
  EXPECT_EQ(p.stages.size(), 2u);
}

TEST(Plan, AutoOffloadComputeWeighsStreamingAgainstCpuCompute) {
  PlanRequest r = request(model(6, 100 * MiB, 10 * MiB), {{"cuda:0", 500 * MiB}, {"cpu", 4000 * MiB}});
  r.offload_compute = "auto";
  r.cpu_compute = 6e9;  // a CPU that reads weights far slower than PCIe carries them
  const Plan stream = make_plan(r);
  EXPECT_EQ(stream.offload_compute, "cuda:0");
  EXPECT_NE(stream.offload_choice.find("all of 6 offloaded modules streamed to cuda:0: ~"), std::string::npos)
      << stream.offload_choice;
  EXPECT_NE(stream.offload_choice.find("chose cuda:0"), std::string::npos) << stream.offload_choice;
  r.cpu_compute = 1e15;  // a CPU that reads weights faster than PCIe carries them
  const Plan cpu = make_plan(r);
  EXPECT_EQ(cpu.offload_compute, "cpu");
  EXPECT_NE(cpu.offload_choice.find("chose cpu"), std::string::npos) << cpu.offload_choice;
  r.budgets[0].bytes = 150 * MiB;  // no room for the double buffer: CPU compute, and it says why
  const Plan tight = make_plan(r);
  EXPECT_EQ(tight.offload_compute, "cpu");
  EXPECT_NE(tight.offload_choice.find("does not fit"), std::string::npos) << tight.offload_choice;
}

TEST(Plan, AHybridOffloadStreamsEveryOtherLayerWhileTheCpuComputesTheRest) {
  // 12 layers of 100 MiB, KV 1 MiB a layer; the GPU keeps 3 beside its double buffer.
  // With PCIe and the CPU equally fast, the cost model streams about half of the 11
  // offloaded modules (9 layers, norm, head), each after a CPU-computed one whose
  // compute hides its copy.
  PlanRequest r = request(model(12, 100 * MiB, 10 * MiB, false, /*kv_per_token=*/1024),
                          {{"cuda:0", 560 * MiB}, {"cpu", 8000 * MiB}});
  r.max_seq_len = 1024;
  r.cpu_compute = r.pinned_h2d;
  r.offload_compute = "cpu+cuda:0";
  const Plan p = make_plan(r);
  EXPECT_EQ(p.offload_compute, "cpu+cuda:0") << p.offload_choice;
  ASSERT_EQ(p.stages.size(), 3u);
  EXPECT_EQ(p.stages[0].device.str(), "cuda:0");  // resident layers
  int streamed = 0, on_cpu = 0;
  for (const Stage& s : p.stages) {
    int layers = 0;
    for (const Segment& g : s.segments)
      for (int64_t i = g.begin; i < g.end; ++i) layers += r.model.modules[i].kind == ModuleKind::kLayer;
    if (s.rank == 1) continue;
    EXPECT_EQ(s.tiers.front().str(), "cpu:0");  // both offload stages keep their weights in RAM
    (s.device.str() == "cuda:0" ? streamed : on_cpu) += layers;
  }
  EXPECT_GE(streamed, 3);
  EXPECT_GE(on_cpu, 3);
  // The route alternates between the two offload stages (no two streamed in a row).
  for (size_t k = 1; k < p.route_ranks.size(); ++k) EXPECT_NE(p.route_ranks[k], p.route_ranks[k - 1]);
  for (size_t k = 0; k < p.route_ranks.size(); ++k) {
    if (p.stages[p.route_ranks[k] - 1].device.str() == "cuda:0" && p.route_ranks[k] != 1) {
      EXPECT_EQ(p.route_segments[k].end - p.route_segments[k].begin, 1) << "streamed run at " << k;
    }
  }
  // The CPU-computed layers keep their KV cache on the CPU; the GPU one buffer pair.
  EXPECT_EQ(p.devices.at("cpu:0").kv, static_cast<uint64_t>(on_cpu) * MiB);
  EXPECT_EQ(p.devices.at("cuda:0").kv, static_cast<uint64_t>(12 - on_cpu) * MiB);
  EXPECT_EQ(p.devices.at("cuda:0").staging, 200 * MiB);
  EXPECT_EQ(p.edges[1].transport, Transport::kShm);

  // The split beats both single ways by the cost model, and auto finds it.
  PlanRequest all = r;
  all.offload_compute = "cuda:0";
  PlanRequest cpu = r;
  cpu.offload_compute = "cpu";
  EXPECT_LT(p.predicted_step_s, make_plan(all).predicted_step_s);
  EXPECT_LT(p.predicted_step_s, make_plan(cpu).predicted_step_s);
  r.offload_compute = "auto";
  EXPECT_EQ(make_plan(r).offload_compute, "cpu+cuda:0");

  // At max_batch 16 a CPU layer costs its FLOPs (16 x 100 Mi / 400 GFLOP/s, 4.2 ms), twice
  // a copy: auto streams every offloaded layer.
  r.max_batch = 16;
  EXPECT_EQ(make_plan(r).offload_compute, "cuda:0") << make_plan(r).offload_choice;
  r.max_batch = 1;

  // An explicit share: a third of 11, rounded.
  r.offload_compute = "cpu+cuda:0";
  r.streamed_share = 1.0 / 3;
  const Plan third = make_plan(r);
  EXPECT_NE(third.offload_choice.find("4 of 11 offloaded modules streamed"), std::string::npos) << third.offload_choice;
  r.offload_compute = "cpu";
  EXPECT_THROW_WITH(make_plan(r), PlanError, "streamed_share", "cpu+cuda:N");
}

TEST(Plan, TheEmbeddingLeavesTheGpuToALayerWhenLayersAreOffloaded) {
  // Embedding, layers and head of 100 MiB each; the GPU holds four of them.
  PlanRequest r = request(model(8, 100 * MiB, 100 * MiB), {{"cuda:0", 450 * MiB}, {"cpu", 8000 * MiB}});
  r.offload_compute = "cpu";
  const Plan p = make_plan(r);
  EXPECT_EQ(devices_of(p),
            (std::vector<std::string>{"cpu", "0", "0", "0", "0", "cpu", "cpu", "cpu", "cpu", "cpu", "cpu"}));
  EXPECT_EQ(p.route_ranks, (std::vector<int>{1, 2, 1}));  // the CPU stage looks up the rows, then computes the tail

  // The cost model charges the lookup nothing: the CPU's share is its layers and head.
  r.cpu_compute = 1e9;
  const double cpu_bytes = 4 * 100 * MiB + 128 + 100 * MiB;
  EXPECT_NEAR(make_plan(r).predicted_step_s, cpu_bytes / 1e9 + 4 * 100 * MiB / r.gpu_compute + 4 * kHopSeconds,
              1e-6);  // 3 segments and the way back

  // Hybrid: the embedding computes on the CPU whatever the split, even all layers streamed.
  r.offload_compute = "cpu+cuda:0";
  r.streamed_share = 1.0;
  const Plan h = make_plan(r);
  EXPECT_EQ(h.module_device[0].str(), "cpu:0");
  EXPECT_EQ(h.stages[static_cast<size_t>(h.route_ranks[0] - 1)].device.str(), "cpu:0");
  EXPECT_EQ(h.offload_compute, "cpu+cuda:0");
  EXPECT_NE(h.offload_choice.find("the embedding looked up on the CPU"), std::string::npos) << h.offload_choice;

  // Streaming everything (cuda:0) keeps accelerate's order: a streamed embedding would
  // cross PCIe whole.
  r.offload_compute = "cuda:0";
  r.streamed_share.reset();
  EXPECT_EQ(hf_device(make_plan(r).module_device[0]), "0");
  // So does an encoder-decoder model (its decoder embeds again) and a model that fits.
  r.offload_compute = "cpu";
  r.model.embedding_movable = false;
  EXPECT_EQ(hf_device(make_plan(r).module_device[0]), "0");
  r.model.embedding_movable = true;
  r.budgets[0].bytes = 2000 * MiB;
  for (const auto& d : devices_of(make_plan(r))) EXPECT_EQ(d, "0");
}

// A stream that reads the disk tier holds CASCADE_STAGING_BUFFERS pinned buffers of its
// largest module in host memory: the offload CPU's budget pays for them, so fewer modules
// stay there, and a budget smaller than the buffers is refused with what to change.
TEST(Plan, TheHostsStagingBuffersComeOutOfTheCpuBudget) {
  PlanRequest r = request(model(16, 100 * MiB, 10 * MiB), {{"cuda:0", 500 * MiB}, {"cpu", 1050 * MiB}, {"disk", {}}});
  r.offload_compute = "cuda:0";
  const Plan p = make_plan(r);
  const DeviceUsage& cpu = p.devices.at("cpu:0");
  EXPECT_EQ(cpu.staging, 4 * 100 * MiB);
  EXPECT_LE(cpu.total(), 1050 * MiB);
  EXPECT_LE(cpu.weights, 650 * MiB);
  EXPECT_GT(p.devices.at("disk").weights, 0u);
  r.staging_buffers = 2;
  const Plan two = make_plan(r);
  EXPECT_EQ(two.devices.at("cpu:0").staging, 2 * 100 * MiB);
  EXPECT_GT(two.devices.at("cpu:0").weights, cpu.weights);  // the room two buffers leave holds layers
  r.staging_buffers = 0;                                    // a stream still holds one buffer
  EXPECT_EQ(make_plan(r).devices.at("cpu:0").staging, 100 * MiB);
  // Nothing on disk: no host staging.
  r.budgets = {{parse_device("cuda:0"), 500 * MiB}, {parse_device("cpu"), 4000 * MiB}};
  EXPECT_EQ(make_plan(r).devices.at("cpu:0").staging, 0u);
  // The CPU computes the disk tier itself: no stream, no staging.
  r.budgets = {{parse_device("cuda:0"), 500 * MiB}, {parse_device("cpu"), 300 * MiB}, {parse_device("disk"), {}}};
  r.offload_compute = "cpu";
  EXPECT_EQ(make_plan(r).devices.at("cpu:0").staging, 0u);
  // Streaming with less host memory than the buffers: refused, saying what to change.
  r.offload_compute = "cuda:0";
  r.staging_buffers = 4;
  try {
    make_plan(r);
    ADD_FAILURE() << "a 300 MiB CPU budget cannot hold four 100 MiB staging buffers";
  } catch (const PlanError& e) {
    EXPECT_NE(std::string(e.what()).find("CASCADE_STAGING_BUFFERS"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cpu:0"), std::string::npos) << e.what();
  }
}

TEST(Plan, ExpertsLeaveTheGpuBeforeAttention) {
  // 4 layers of 10 MiB attention + 8 x 20 MiB experts; the GPU holds 250 MiB: all the
  // attention, the embedding and head (80 MiB), and one expert block (161 MiB).
  PlanRequest r = request(moe_model(4, 10 * MiB, 20 * MiB), {{"cuda:0", 250 * MiB}, {"cpu", 8000 * MiB}});
  r.offload_compute = "cpu";
  const Plan p = make_plan(r);
  const auto d = devices_of(p);
  EXPECT_EQ(d, (std::vector<std::string>{"0", "0", "0", "0", "cpu", "0", "cpu", "0", "cpu", "0", "0"}));
  ASSERT_EQ(p.stages.size(), 2u);
  EXPECT_EQ(p.route_ranks, (std::vector<int>{1, 2, 1, 2, 1, 2, 1}));  // the route alternates
  EXPECT_EQ(p.devices.at("cpu:0").kv, 0u);                            // experts keep no KV cache
  EXPECT_LE(p.devices.at("cuda:0").total(), 250 * MiB);

  // with-layer: accelerate's order; after the first block that does not fit, everything
  // (attention, experts, norm, head) leaves.
  r.experts = config::ExpertPlacement::kWithLayer;
  EXPECT_EQ(devices_of(make_plan(r)),
            (std::vector<std::string>{"0", "0", "0", "0", "cpu", "cpu", "cpu", "cpu", "cpu", "cpu", "cpu"}));

  // offload: every expert block on the CPU although one would fit.
  r.experts = config::ExpertPlacement::kOffload;
  EXPECT_EQ(devices_of(make_plan(r)),
            (std::vector<std::string>{"0", "0", "cpu", "0", "cpu", "0", "cpu", "0", "cpu", "0", "0"}));
  r.budgets = {{parse_device("cuda:0"), 250 * MiB}};
  EXPECT_THROW_WITH(make_plan(r), PlanError, "experts = \"offload\"", "add \"cpu\"");
}

TEST(Plan, TheMostSpecificDeviceMapKeyWins) {
  PlanRequest r = request(moe_model(2, 10 * MiB, 10 * MiB), {{"cuda:0", 1000 * MiB}, {"cpu", 1000 * MiB}});
  r.device_map = {{"", parse_device("cuda:0")}, {"model.layers.1.block_sparse_moe", parse_device("cpu")}};
  EXPECT_EQ(devices_of(make_plan(r)), (std::vector<std::string>{"0", "0", "0", "0", "cpu", "0", "0"}));
}

TEST(Plan, ManualMapWithPrefixesAndAReturnToAnEarlierStage) {
  PlanRequest r = request(model(4, 10 * MiB, 10 * MiB), {{"cpu:0", 1000 * MiB}, {"cpu:1", 1000 * MiB}});
  r.device_map = {{"model.embed_tokens", parse_device("cpu:0")},
                  {"model.layers", parse_device("cpu:1")},
                  {"model.norm", parse_device("cpu:0")},
                  {"lm_head", parse_device("cpu:0")}};
  const Plan p = make_plan(r);
  ASSERT_EQ(p.stages.size(), 2u);
  EXPECT_EQ(p.stages[0].segments.size(), 2u);  // rank 1 runs the embedding, then norm + head
  EXPECT_EQ(p.route_ranks, (std::vector<int>{1, 2, 1}));
}

TEST(Plan, ManualMapErrors) {
  PlanRequest r = request(model(2, 10 * MiB, 10 * MiB), {{"cpu", 1000 * MiB}});
  r.device_map = {{"model.layers.0.mlp", parse_device("cpu")}, {"", parse_device("cpu")}};
  EXPECT_THROW_WITH(make_plan(r), PlanError, "'model.layers.0.mlp' would split module 'model.layers.0'");
  r.device_map = {{"model.layerz", parse_device("cpu")}};
  EXPECT_THROW_WITH(make_plan(r), PlanError, "'model.layerz' matches no module");
  r.device_map = {{"model.layers", parse_device("cpu")}};
  EXPECT_THROW_WITH(make_plan(r), PlanError, "'model.embed_tokens' is not covered");
  r.device_map = {{"", parse_device("cuda:3")}};
  EXPECT_THROW_WITH(make_plan(r), PlanError, "cuda:3", "no budget");
  r.device_map = {{"", parse_device("cpu")}};
  r.budgets = {{parse_device("cpu"), 5 * MiB}};
  EXPECT_THROW_WITH(make_plan(r), PlanError, "puts", "on cpu:0", "budget is 5.00 MiB");
}

// Property tests: random models and budgets. Whatever the planner returns keeps every
// budget, places every module, keeps execution order along the route, and is
// deterministic; when it refuses, it says why.
TEST(PlanProperties, RandomModelsAndBudgets) {
  std::mt19937_64 rng(20261123);
  int planned = 0, refused = 0;
  for (int trial = 0; trial < 400; ++trial) {
    auto u = [&](uint64_t lo, uint64_t hi) { return std::uniform_int_distribution<uint64_t>(lo, hi)(rng); };
    ModelDescriptor m = model(static_cast<int>(u(1, 24)), u(1, 64) * MiB, u(1, 128) * MiB, u(0, 1), u(0, 8192));
    for (auto& mod : m.modules) {  // uneven layers
      if (mod.kind == ModuleKind::kLayer) mod.tensors[0].bytes = u(1, 64) * MiB;
    }
    std::vector<std::pair<std::string, std::optional<uint64_t>>> budgets;
    const int gpus = static_cast<int>(u(0, 4));
    for (int g = 0; g < gpus; ++g) budgets.push_back({"cuda:" + std::to_string(g), u(32, 1024) * MiB});
    const int cpus = static_cast<int>(u(gpus ? 0 : 1, 3));
    for (int c = 0; c < cpus; ++c) budgets.push_back({"cpu:" + std::to_string(c), u(32, 2048) * MiB});
    if (u(0, 1)) budgets.push_back({"disk", std::nullopt});
    PlanRequest r = request(m, budgets);
    r.strategy = static_cast<config::Strategy>(u(0, 3));
    r.mode = u(0, 1) ? config::Mode::kPipeline : config::Mode::kSequential;
    r.max_batch = static_cast<int64_t>(u(1, 8));
    r.max_seq_len = static_cast<int64_t>(u(16, 512));
    if (gpus && u(0, 1)) r.offload_compute = "cuda:0";
    Plan p;
    try {
      p = make_plan(r);
    } catch (const PlanError& e) {
      ++refused;
      EXPECT_NE(std::string(e.what()).find("needs"), std::string::npos) << e.what();
      continue;
    }
    ++planned;
    ASSERT_EQ(p.module_device.size(), r.model.modules.size());
    for (const auto& [name, use] : p.devices) {
      if (use.budget) {
        EXPECT_LE(use.total(), *use.budget) << "trial " << trial << " device " << name;
      }
    }
    // The route visits every module exactly once, in execution order.
    int64_t next = 0;
    for (const auto& seg : p.route_segments) {
      EXPECT_EQ(seg.begin, next) << "trial " << trial;
      next = seg.end;
    }
    EXPECT_EQ(next, static_cast<int64_t>(r.model.modules.size()));
    // Fill strategies never return to an earlier device, but to the one that looked up
    // the embedding (placed last where that let more onto the GPUs: PlanRequest::offload_compute).
    std::set<int> left;
    const bool embedding_apart = p.route_segments.front().end == 1 && p.route_ranks.size() > 1;
    for (size_t k = embedding_apart ? 2 : 1; k < p.route_ranks.size(); ++k) {
      left.insert(p.route_ranks[k - 1]);
      EXPECT_FALSE(left.count(p.route_ranks[k]))
          << "trial " << trial << ": " << ::testing::PrintToString(devices_of(p));
    }
    const Plan again = make_plan(r);
    EXPECT_EQ(devices_of(again), devices_of(p)) << "trial " << trial;
  }
  std::cout << "[ planner ] " << planned << " plans, " << refused << " refused\n";
  EXPECT_GT(planned, 100);
}

}  // namespace
}  // namespace cascade::planner
