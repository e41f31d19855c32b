// Runs under `mpirun -np 2`. Every transport, both directions, payloads from 1 byte to
// 64 MiB, plus deadlines and liveness.
#include "comm/channel.h"

#include "tests/test_util.h"

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace cascade::comm {
namespace {

Clock::time_point in(double s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// Payloads of 0, 1, 6 and 8 bytes, then 4 KiB to 64 MiB, in four dtypes.
std::vector<at::Tensor> payloads(int64_t seed) {
  std::vector<at::Tensor> v;
  v.push_back(at::tensor({static_cast<int64_t>(42 + seed)}, at::kLong));                   // 8 B
  v.push_back(at::empty({0}, at::kLong));                                                  // 0 B
  v.push_back(at::full({1}, 200 + seed, at::kByte));                                       // 1 B
  v.push_back(at::arange(3, at::kBFloat16).add_(static_cast<double>(seed)).view({1, 3}));  // 6 B
  for (int64_t bytes : {int64_t{4} << 10, int64_t{1} << 20, int64_t{7} << 20, int64_t{64} << 20}) {
    v.push_back(at::arange(bytes / 4, at::kFloat).add_(static_cast<double>(seed)).view({-1, 64}));  // [rows, 64]
  }
  return v;
}

// Rank 0 -> 1 on hop `tag`, then 1 -> 0 on hop `tag + 1`, every payload size.
void round_trip(const std::string& transport) {
  World& w = World::get();
  const int me = w.rank(), peer = 1 - me;
  const std::string base = "/cascade-test-ch-" + transport + "-";
  std::unique_ptr<Channel> to, from;
  // Each rank creates the ring it receives on, then opens the one it sends on.
  const std::string recv_name = base + std::to_string(me), send_name = base + std::to_string(peer);
  if (transport == "shm") {
    from = shm_receiver(recv_name, 1 << 20);  // smaller than most payloads: they stream through
    MPI_Barrier(w.comm());
    to = shm_sender(send_name, in(10));
  } else {
    from = mpi_channel(w, peer, kTagData + peer);
    to = mpi_channel(w, peer, kTagData + me);
  }
  for (int dir = 0; dir < 2; ++dir) {
    const bool sending = (dir == 0) == (me == 0);
    const auto tensors = payloads(dir);
    for (size_t i = 0; i < tensors.size(); ++i) {
      StepHeader h;
      h.step_id = 1000 * dir + i;
      h.kind = StepKind::kDecode;
      h.seqs = {{3, 10, 1, 0.5, 4, 0.9, 7}};
      if (sending) {
        to->send(h, tensors[i], in(30));
      } else {
        const Message m = from->recv(in(30));
        EXPECT_EQ(m.header.step_id, h.step_id);
        EXPECT_EQ(m.header.seqs, h.seqs);
        ASSERT_EQ(m.payload.sizes(), tensors[i].sizes()) << transport << " payload " << i;
        EXPECT_EQ(m.payload.scalar_type(), tensors[i].scalar_type());
        EXPECT_TRUE(at::equal(m.payload, tensors[i])) << transport << " payload " << i;
      }
    }
  }
  MPI_Barrier(w.comm());
}

TEST(Channel, ShmBothDirectionsEverySize) { round_trip("shm"); }
TEST(Channel, MpiBothDirectionsEverySize) { round_trip("mpi"); }

TEST(Channel, NonContiguousPayloadsArriveContiguous) {
  World& w = World::get();
  auto ch = mpi_channel(w, 1 - w.rank(), kTagData + 50);
  const at::Tensor t = at::arange(12, at::kFloat).view({3, 4}).t();  // [4, 3], strided
  if (w.rank() == 0)
    ch->send({}, t, in(10));
  else
    EXPECT_TRUE(at::equal(ch->recv(in(10)).payload, t.contiguous()));
  MPI_Barrier(w.comm());
}

TEST(Channel, ARecvWithNoSenderEndsAtTheDeadlineOrOnLiveness) {
  World& w = World::get();
  const std::string name = "/cascade-test-ch-idle-" + std::to_string(w.rank());
  auto shm = shm_receiver(name, 4096);
  EXPECT_THROW_WITH(shm->recv(in(0.3)), CommError, "timed out");
  shm->set_liveness([] { throw CommError("stage 2 (rank 2, cpu:1) exited"); });
  EXPECT_THROW_WITH(shm->recv(in(60)), CommError, "stage 2 (rank 2, cpu:1) exited");
  auto mpi = mpi_channel(w, 1 - w.rank(), kTagData + 60);
  mpi->set_liveness([] { throw CommError("the coordinator exited"); });
  EXPECT_THROW_WITH(mpi->recv(in(60)), CommError, "the coordinator exited");
  MPI_Barrier(w.comm());
}

#ifdef CASCADE_WITH_CUDA
// A GPU end on each side of a pinned shm ring: the payload goes GPU -> ring -> GPU.
TEST(Channel, ShmWithCudaEndpoints) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  World& w = World::get();
  const int me = w.rank(), peer = 1 - me;
  auto from = shm_receiver("/cascade-test-ch-cuda-" + std::to_string(me), 1 << 20);
  from->set_device(at::Device(at::kCUDA, 0));
  MPI_Barrier(w.comm());
  auto to = shm_sender("/cascade-test-ch-cuda-" + std::to_string(peer), in(10));
  for (int64_t bytes : {int64_t{4}, int64_t{3} << 20, int64_t{64} << 20}) {
    const at::Tensor t = at::arange(bytes / 4, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
    if (me == 0) {
      to->send({}, t, in(30));
    } else {
      const Message m = from->recv(in(30));
      EXPECT_TRUE(m.payload.is_cuda());
      EXPECT_TRUE(at::equal(m.payload, t)) << bytes << " bytes";
    }
  }
  MPI_Barrier(w.comm());
}
// NCCL between two GPUs (rank r on cuda:r): both directions, 1 byte to 256 MiB, with
// the bandwidth of the largest transfer printed. Needs a machine with two GPUs.
TEST(Channel, NcclBothDirectionsEverySize) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 2) GTEST_SKIP() << "needs two GPUs";
  World& w = World::get();
  const int me = w.rank();
  const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(me));
  auto to1 = nccl_channel(w, 1 - me, kTagData + 70, me == 0, dev, in(60));  // 0 -> 1
  auto to0 = nccl_channel(w, 1 - me, kTagData + 71, me == 1, dev, in(60));  // 1 -> 0
  const std::vector<int64_t> sizes = {1, 1000, int64_t{1} << 20, int64_t{64} << 20, int64_t{256} << 20};
  for (int dir = 0; dir < 2; ++dir) {
    Channel& ch = dir == 0 ? *to1 : *to0;
    const bool sending = (dir == 0) == (me == 0);
    for (int64_t bytes : sizes) {
      const at::Tensor t = at::arange(bytes, at::TensorOptions().dtype(at::kByte).device(dev));
      MPI_Barrier(w.comm());
      const auto t0 = Clock::now();
      if (sending) {
        ch.send({}, t, in(60));
      } else {
        const Message m = ch.recv(in(60));
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        EXPECT_TRUE(m.payload.is_cuda());
        EXPECT_EQ(m.payload.device().index(), me);
        EXPECT_TRUE(at::equal(m.payload.cpu(), t.cpu())) << bytes << " bytes, direction " << dir;
        if (bytes == sizes.back())
          std::printf("[ nccl ] %d -> %d: %lld MiB in %.2f ms: %.1f GB/s\n", 1 - me, me,
                      static_cast<long long>(bytes >> 20), s * 1e3, static_cast<double>(bytes) / s / 1e9);
      }
    }
  }
  MPI_Barrier(w.comm());
}
#endif

TEST(Channel, CorruptHeadersAreRejected) {
  StepHeader h;
  h.shape = {-3};
  h.dtype = static_cast<uint8_t>(at::kFloat);
  EXPECT_THROW_WITH(empty_payload(h, "hop 2"), CommError, "hop 2", "impossible payload shape");
  h.shape = {4};
  h.dtype = 200;
  EXPECT_THROW_WITH(empty_payload(h, "hop 2"), CommError, "dtype code 200");
  h.shape = {int64_t{1} << 40, int64_t{1} << 40};
  h.dtype = static_cast<uint8_t>(at::kFloat);
  EXPECT_THROW(empty_payload(h, "hop 2"), CommError);
}

}  // namespace
}  // namespace cascade::comm
