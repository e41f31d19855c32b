// The planner's fill on its own (planner/fill.h): the fill order, what the Ledger charges
// (tied tensors once a tier, KV where a module computes, activations once a device), and
// a manual device_map resolved by its most specific key.
#include "planner/fill.h"

#include <gtest/gtest.h>

#include "tests/plan_models.h"
#include "tests/test_util.h"

namespace cascade::planner::detail {
namespace {

using test_models::MiB;

TEST(Fill, OrderIsGpusThenCpusThenDiskWithoutRepeats) {
  const auto r = test_models::request(test_models::model(2, MiB, MiB),
                                      {{"disk", std::nullopt}, {"cpu", MiB}, {"cuda:1", MiB}, {"cuda:0", MiB}});
  std::vector<DeviceBudget> budgets = r.budgets;
  budgets.push_back(budgets[2]);  // cuda:1 twice
  std::vector<std::string> got;
  for (const auto& d : fill_order(budgets)) got.push_back(d.str());
  EXPECT_EQ(got, (std::vector<std::string>{"cuda:0", "cuda:1", "cpu:0", "disk"}));
}

TEST(Fill, LedgerChargesATiedTensorOnceATierAndActivationsOnceADevice) {
  // Embedding and head share one 8 MiB tensor; layers hold 1 MiB and 64 KV bytes a token.
  auto r = test_models::request(test_models::model(2, MiB, 8 * MiB, /*tied=*/true, /*kv_per_token=*/64),
                                {{"cuda:0", std::nullopt}, {"cpu", std::nullopt}});
  Ledger l(r);
  const int64_t head = static_cast<int64_t>(r.model.modules.size()) - 1;
  l.place(0, config::parse_device("cuda:0"));
  const auto again = l.charge(head, config::parse_device("cuda:0"));
  EXPECT_EQ(again.at("cuda:0").weights, 0u);  // the embedding's copy serves the head
  const auto elsewhere = l.charge(head, config::parse_device("cpu"));
  EXPECT_EQ(elsewhere.at("cpu:0").weights, 8 * MiB);
  const auto layer = l.charge(1, config::parse_device("cuda:0"));
  EXPECT_EQ(layer.at("cuda:0").kv, 64u * r.max_batch * r.max_seq_len);
  EXPECT_EQ(layer.at("cuda:0").activations, 0u);  // the embedding's placement charged them
  EXPECT_FALSE(l.overflow(layer));
  l.set_cap(config::parse_device("cuda:0"), 9 * MiB);
  EXPECT_EQ(l.overflow(layer), std::optional<std::string>("cuda:0"));
}

TEST(Fill, ManualMapTakesTheMostSpecificKeyAndNamesAKeyThatMatchesNothing) {
  auto r = test_models::request(test_models::model(3, MiB, MiB), {{"cuda:0", std::nullopt}, {"cpu", std::nullopt}});
  r.device_map = {{"", config::parse_device("cuda:0")}, {"model.layers.1", config::parse_device("cpu")}};
  const std::vector<DeviceName> got = resolve_manual(r);
  ASSERT_EQ(got.size(), r.model.modules.size());
  EXPECT_EQ(got[2].str(), "cpu:0");  // model.layers.1 (module 0 is the embedding)
  EXPECT_EQ(got[1].str(), "cuda:0");
  EXPECT_EQ(got.back().str(), "cuda:0");
  r.device_map.push_back({"model.layer.7", config::parse_device("cpu")});
  EXPECT_THROW_WITH(resolve_manual(r), PlanError, "model.layer.7", "matches no module");
}

}  // namespace
}  // namespace cascade::planner::detail
