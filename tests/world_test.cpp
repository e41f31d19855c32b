// Runs under `mpirun -np 2`: rank 0 and rank 1 each run every test.
#include "comm/world.h"

#include "tests/test_util.h"

namespace cascade::comm {
namespace {

Clock::time_point in(double s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

TEST(World, RanksAndHost) {
  World& w = World::get();
  ASSERT_EQ(w.size(), 2) << "run under mpirun -np 2";
  EXPECT_FALSE(w.spawned());
  EXPECT_EQ(w.local_rank(), w.rank());  // one host
  EXPECT_FALSE(w.multi_node());
  EXPECT_EQ(w.local_stage_index(), w.rank() - 1);  // rank 0, the coordinator, is on this host
  EXPECT_FALSE(w.host().empty());
}

TEST(World, ControlMessagesBothWays) {
  World& w = World::get();
  const int peer = 1 - w.rank();
  w.send(peer, kTagAssign, "hello from " + std::to_string(w.rank()), in(10), nullptr);
  int from = -1;
  const auto got = w.recv(MPI_ANY_SOURCE, kTagAssign, in(10), nullptr, &from);
  EXPECT_EQ(from, peer);
  EXPECT_EQ(std::string(got.begin(), got.end()), "hello from " + std::to_string(peer));
  std::vector<uint8_t> none;
  EXPECT_FALSE(w.try_recv(peer, kTagAssign, &none));
}

TEST(World, WaitsEndAtTheDeadlineOrWhenLivenessFails) {
  World& w = World::get();
  const auto t0 = Clock::now();
  EXPECT_THROW_WITH(w.recv(1 - w.rank(), kTagTrace, in(0.2), nullptr), CommError, "timed out",
                    "rank " + std::to_string(1 - w.rank()));
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  EXPECT_THROW_WITH(w.recv(1 - w.rank(), kTagTrace, in(60), [] { throw CommError("peer is gone"); }), CommError,
                    "peer is gone");
  std::vector<uint8_t> buf(16);
  EXPECT_THROW_WITH(w.recv_raw(1 - w.rank(), kTagTrace, buf.data(), buf.size(), in(0.2), nullptr), CommError,
                    "timed out in MPI_Irecv");
  MPI_Barrier(w.comm());
}

}  // namespace
}  // namespace cascade::comm
