// WeightStream: the device slots that stream offloaded layers to a GPU. Without a GPU
// only the factory's contract and the environment's settings are checked; with one,
// five modules through 2, 3 and 4 slots and three through 4.
#include "stage/weights/weight_stream.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/test_util.h"

namespace cascade::stage {
namespace {

TEST(WeightStream, OnlyForCudaDevices) { EXPECT_EQ(WeightStream::create(at::kCPU, 1024), nullptr); }

// A slot count outside the plan's range is refused, not clamped: the plan reserved the
// GPU memory for exactly the count it hands the stage.
TEST(WeightStream, RefusesSlotCountsNoPlanHas) {
  for (const int slots : {-1, 0, 1, 9})
    EXPECT_THROW_WITH(WeightStream::create(at::kCPU, 1024, slots), std::invalid_argument, "GPU slots",
                      std::to_string(slots));
  EXPECT_EQ(WeightStream::create(at::kCPU, 1024, 8), nullptr);
}

// The counts the environment may set, clamped: the disk tier's readers (the cores less
// one, 1 to 16, unless CASCADE_STREAM_READERS says otherwise; 1 to 64) and the pinned
// staging buffers (4; 2 to 8). Each row: the
// variable, the function, its default, then values set and what they give.
TEST(WeightStream, CountsFollowTheEnvironment) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  struct Row {
    const char* var;
    int (*count)();
    int fallback;
    std::vector<std::pair<const char*, int>> set;
  };
  const Row rows[] = {
      {"CASCADE_STREAM_READERS",
       &WeightStream::reader_threads,
       std::clamp(cores - 1, 1, 16),
       {{"24", 24}, {"500", 64}, {"0", 1}}},
      {"CASCADE_STAGING_BUFFERS", &WeightStream::staging_buffers, 4, {{"6", 6}, {"1", 2}, {"99", 8}}},
  };
  for (const Row& r : rows) {
    ::unsetenv(r.var);
    EXPECT_EQ(r.count(), r.fallback) << r.var;
    for (const auto& [value, want] : r.set) {
      ::setenv(r.var, value, 1);
      EXPECT_EQ(r.count(), want) << r.var << "=" << value;
    }
    ::unsetenv(r.var);
  }
}

// (slots, modules). Across the end of the order, neighbours share a slot where the
// count is not a multiple of the slots (modules 4 and 0 with two or four slots, 3 and 0
// with three, 2 and 0 with two); three modules in four slots stay there after their
// first copy.
class Slots : public ::testing::TestWithParam<std::pair<int, int>> {};
INSTANTIATE_TEST_SUITE_P(Counts, Slots,
                         ::testing::Values(std::make_pair(2, 5), std::make_pair(3, 5), std::make_pair(4, 5),
                                           std::make_pair(4, 3), std::make_pair(2, 3)));

TEST_P(Slots, EachModuleSeesItsOwnWeightsBetweenAcquireAndRelease) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  const auto [slots, modules] = GetParam();
  auto ws = WeightStream::create(at::Device(at::kCUDA, 0), 4096, slots);
  ASSERT_NE(ws, nullptr);
  std::vector<at::Tensor> host, views;
  for (int64_t k = 0; k < modules; ++k) {
    host.push_back(at::full({16, 8}, static_cast<float>(k + 1)).pin_memory());
    views.push_back(ws->add(k, host.back()));
  }
  EXPECT_EQ(ws->host_bytes(), static_cast<uint64_t>(modules) * 16 * 8 * 4);
  for (int64_t k = 0; k + slots < modules; ++k)  // one slot, two modules
    EXPECT_EQ(views[static_cast<size_t>(k)].data_ptr(), views[static_cast<size_t>(k + slots)].data_ptr());
  EXPECT_NE(views[0].data_ptr(), views[1].data_ptr());
  // Steps 0-2 prefetch the next modules while one computes; steps 3-5 hold them back
  // until prefetch() (a hybrid offload: every streamed module ends its stage's hop); 6-7
  // never call prefetch(), so acquire copies each module itself.
  for (int step = 0; step < 8; ++step) {
    const bool ahead = step < 3;
    for (int64_t k = 0; k < modules; ++k) {
      ws->acquire(k, ahead);
      const at::Tensor seen = (views[static_cast<size_t>(k)] * 1).cpu();  // a kernel on the compute stream
      ws->release(k, ahead);
      if (step >= 3 && step < 6) ws->prefetch();
      EXPECT_TRUE(at::equal(seen, host[static_cast<size_t>(k)])) << "step " << step << " module " << k;
    }
  }
  EXPECT_THROW(ws->add(modules, at::zeros({2048}).pin_memory()), c10::Error);  // 8 KiB: more than a slot
}

// A streamed module that adds no tensor of its own (its weights are all resident) still
// takes its turn; one never added is refused by name.
TEST(WeightStream, AModuleWithoutTensorsTakesItsTurn) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  auto ws = WeightStream::create(at::Device(at::kCUDA, 0), 4096);
  const at::Tensor host = at::full({16}, 3.0f).pin_memory();
  const at::Tensor view = ws->add(0, host);
  ws->reserve(2);
  EXPECT_THROW_WITH(ws->acquire(2, true), c10::Error, "streamed module 2 of 2 was never added");
  for (int step = 0; step < 2; ++step) {
    for (int64_t k = 0; k < 2; ++k) {
      ws->acquire(k, true);
      if (k == 0) {
        EXPECT_TRUE(at::equal(view.cpu(), host));
      }
      ws->release(k, true);
    }
  }
}

// Pageable host memory (as the disk tier's mappings are) goes through the readers and the
// pinned staging buffers: in order, step after step, and in an order the read-ahead did
// not expect (a staged module is dropped and read again). Five modules, four of them
// staged, through 2, 4 and 8 staging buffers: in order for three steps, then out of
// order (buffers read ahead for modules not used next).
class StagedWeights : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Buffers, StagedWeights, ::testing::Values("2", "4", "8"));

TEST_P(StagedWeights, PageableWeightsAreStagedAheadInAnyOrder) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  ::setenv("CASCADE_STAGING_BUFFERS", GetParam(), 1);
  auto ws = WeightStream::create(at::Device(at::kCUDA, 0), 1 << 20);
  test::TempDir dir;
  std::vector<at::Tensor> host, views;
  for (int64_t k = 0; k < 5; ++k) {
    // Modules 0, 1, 3 pageable (1 has two pieces), module 2 pinned, module 4 read from a
    // file (at offset 4096, as a disk-tier tensor in its shard).
    at::Tensor t = at::arange(k * 1000, k * 1000 + 40000, at::kFloat);
    host.push_back(k == 2 ? t.pin_memory() : t);
    if (k == 4) {
      std::string bytes(4096, 'x');
      bytes.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * 4);
      test::write_file(dir.file("shard.bin"), bytes);
      views.push_back(ws->add(k, at::zeros_like(t), dir.file("shard.bin"), 4096));  // the file, not the tensor, counts
    } else {
      views.push_back(ws->add(k, host.back()));
    }
    if (k == 1) {
      host.push_back(at::full({777}, 5.0));
      views.push_back(ws->add(k, host.back()));
    }
  }
  auto check_module = [&](int64_t k) {
    ws->acquire(k, true);
    std::vector<at::Tensor> seen;
    for (size_t i = 0; i < views.size(); ++i) {
      const int64_t owner = i <= 1 ? static_cast<int64_t>(i) : static_cast<int64_t>(i) - 1;  // piece i's module
      if (owner == k) seen.push_back((views[i] * 1).cpu());
    }
    ws->release(k, true);
    size_t j = 0;
    for (size_t i = 0; i < views.size(); ++i) {
      const int64_t owner = i <= 1 ? static_cast<int64_t>(i) : static_cast<int64_t>(i) - 1;
      if (owner == k) {
        EXPECT_TRUE(at::equal(seen[j++], host[i])) << "module " << k << " piece " << i;
      }
    }
  };
  for (int step = 0; step < 3; ++step)
    for (int64_t k = 0; k < 5; ++k) check_module(k);
  for (int64_t k : {3, 0, 4, 1, 1, 2, 0}) check_module(k);
  // The readers' account: every staged module's bytes at least once a pass (modules 0,
  // 1, 3 and 4; 2 is pinned and copied straight), in measurable time.
  const WeightStream::ReadStats r = ws->read_stats();
  EXPECT_GE(r.bytes, 3u * (4 * 40000 * 4 + 777 * 4));
  EXPECT_GT(r.busy_s, 0);
  EXPECT_GE(r.waited_s, 0);
  ::unsetenv("CASCADE_STAGING_BUFFERS");
}

}  // namespace
}  // namespace cascade::stage
