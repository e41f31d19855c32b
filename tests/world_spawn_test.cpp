// World::spawn, which a coordinator started alone calls: this binary runs without
// mpirun (a singleton), unlike world_test.
#include "comm/world.h"
#include "tests/test_util.h"

namespace cascade::comm {
namespace {

// A process that never starts MPI (here /bin/sleep; in the field, a runtime torn down
// under the call) would hold MPI_Comm_spawn forever: the wait ends at the deadline with
// an error, and a later spawn is refused rather than run beside the stuck one.
TEST(WorldSpawn, ASpawnWhoseProcessesNeverStartMpiEndsAtTheDeadline) {
  World& w = World::get();
  ASSERT_EQ(w.size(), 1) << "run without mpirun";
  const auto t0 = Clock::now();
  EXPECT_THROW_WITH(w.spawn(1, "/bin/sleep", {"20"}, t0 + std::chrono::seconds(2)), CommError, "MPI_Comm_spawn",
                    "timed out");
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GE(waited, 1.9);
  EXPECT_LT(waited, 10);
  EXPECT_THROW_WITH(w.spawn(1, "/bin/sleep", {"1"}, Clock::now() + std::chrono::seconds(2)), CommError,
                    "never returned");
}

}  // namespace
}  // namespace cascade::comm
