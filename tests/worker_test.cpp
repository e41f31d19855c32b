#include "stage/worker.h"

#include "tests/test_util.h"

namespace cascade::stage {
namespace {

Assignment sample() {
  Assignment a;
  a.rank = 2;
  a.label = "stage 2 (rank 2, cpu:1+disk)";
  a.job = "cascade-1-abc";
  a.heartbeats = "/cascade-1-abc-hb";
  a.model_dir = "/models/x";
  a.dtype = "bfloat16";
  a.device = "cpu:1";
  a.modules = {3, 4, 5};
  a.disk_modules = {5};
  a.kv_slots = 8;
  a.threads = 1;
  a.hops = {{3, 5, {1, "shm", "/cascade-1-abc-e1", 17}, {0, "mpi", "/cascade-1-abc-e2", 18}},
            {5, 6, {1, "shm", "/cascade-1-abc-e3", 19}, {0, "mpi", "/cascade-1-abc-e4", 20}}};
  a.rank_labels = {"the coordinator", "stage 1", "stage 2"};
  return a;
}

TEST(Assignment, RoundTripsThroughJson) {
  const Assignment a = sample();
  const Assignment b = assignment_from_json(nlohmann::json::parse(to_json(a).dump()));
  EXPECT_EQ(to_json(a), to_json(b));
  EXPECT_EQ(b.hops.size(), 2u);
  EXPECT_EQ(b.hops[1].in.name, "/cascade-1-abc-e3");
  EXPECT_EQ(b.disk_modules, std::vector<int64_t>{5});
}

TEST(Assignment, VersionAndFieldErrorsAreNamed) {
  nlohmann::json j = to_json(sample());
  j["version"] = 99;
  EXPECT_THROW_WITH(assignment_from_json(j), std::invalid_argument, "assignment version 99", "same build");
  j = to_json(sample());
  j.erase("hops");
  EXPECT_THROW_WITH(assignment_from_json(j), std::invalid_argument, "malformed stage assignment", "hops");
  j = to_json(sample());
  j["kv_slots"] = "eight";
  EXPECT_THROW_WITH(assignment_from_json(j), std::invalid_argument, "malformed stage assignment");
}

}  // namespace
}  // namespace cascade::stage
