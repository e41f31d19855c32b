// HostStager: the worker pool that reads disk-tier weights into pinned staging buffers
// ahead of use. Real threads, a real mapped file; no GPU needed.
#include "stage/weights/host_stager.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <future>
#include <numeric>
#include <stdexcept>

#include "tests/test_util.h"

namespace cascade::stage {
namespace {

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 31 + (i >> 12));
  return v;
}

// Several copies, of sizes around the 4 MiB chunk, from a mapped file into one buffer.
TEST(HostStager, CopiesAMappedFileExactly) {
  test::TempDir dir;
  const size_t n = 3 * HostStager::kChunk + 12345;
  const std::vector<uint8_t> bytes = pattern(n, 7);
  test::write_file(dir.file("w.bin"), std::string(bytes.begin(), bytes.end()));
  const int fd = ::open(dir.file("w.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* map = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  ASSERT_NE(map, MAP_FAILED);
  const auto* src = static_cast<const uint8_t*>(map);
  std::vector<uint8_t> dst(n + 100, 0);
  HostStager stager(3);
  // Out of order on purpose; one empty copy.
  const uint64_t t =
      stager.submit({{src + HostStager::kChunk + 5, dst.data() + HostStager::kChunk + 5, n - HostStager::kChunk - 5},
                     {src, dst.data(), HostStager::kChunk + 5},
                     {src, dst.data() + n, 0}});
  stager.wait(t);
  EXPECT_TRUE(stager.done(t));
  EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), dst.begin()));
  EXPECT_EQ(dst[n], 0);  // nothing past the end
  ::munmap(map, n);
}

// The disk tier's readers pread() the files (no page faults); a file shorter than the
// copy asks is an error that names the problem, and the next job still runs.
TEST(HostStager, ReadsFilesAndReportsAShortFile) {
  test::TempDir dir;
  const size_t n = 2 * HostStager::kChunk + 999;
  const std::vector<uint8_t> bytes = pattern(n, 9);
  const std::string file = dir.file("w.bin");
  test::write_file(file, std::string(bytes.begin(), bytes.end()));
  std::vector<uint8_t> dst(n - 100, 0);
  HostStager stager(2);
  const uint64_t t = stager.submit({{nullptr, dst.data(), n - 100, file, 100}});  // from byte 100 on
  stager.wait(t);
  EXPECT_TRUE(std::equal(dst.begin(), dst.end(), bytes.begin() + 100));
  std::vector<uint8_t> big(n + 10);
  const uint64_t bad = stager.submit({{nullptr, big.data(), n + 10, file, 0}});
  const uint64_t next = stager.submit({{nullptr, dst.data(), 10, file, 0}});
  try {
    stager.wait(bad);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("unexpected end of file"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();  // names the file
  }
  stager.wait(next);
  EXPECT_TRUE(std::equal(dst.begin(), dst.begin() + 10, bytes.begin()));
  try {
    stager.submit({{nullptr, dst.data(), 10, dir.file("missing.bin"), 0}});
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.bin: cannot open"), std::string::npos) << e.what();
  }
}

// A job waits for its `before` (the last DMA out of its buffer); jobs finish in order.
TEST(HostStager, BeforeGatesTheWritesAndJobsFinishInOrder) {
  HostStager stager(2);
  const std::vector<uint8_t> a = pattern(HostStager::kChunk * 2, 1), b = pattern(1000, 2);
  std::vector<uint8_t> da(a.size()), db(b.size());
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  const uint64_t t1 = stager.submit({{a.data(), da.data(), a.size()}}, [open] { open.wait(); });
  const uint64_t t2 = stager.submit({{b.data(), db.data(), b.size()}});
  EXPECT_LT(t1, t2);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(stager.done(t1));
  EXPECT_FALSE(stager.done(t2));  // queued behind t1
  EXPECT_TRUE(std::all_of(da.begin(), da.end(), [](uint8_t x) { return x == 0; }));
  gate.set_value();
  stager.wait(t2);
  EXPECT_TRUE(stager.done(t1));
  EXPECT_EQ(da, a);
  EXPECT_EQ(db, b);
  // Both jobs' bytes; the busy time leaves out the 100 ms that t1 spent in `before`.
  const HostStager::Stats st = stager.stats();
  EXPECT_EQ(st.bytes, a.size() + b.size());
  EXPECT_GT(st.busy_s, 0);
  EXPECT_LT(st.busy_s, 0.1);
}

// A job that does not finish within the stager's limit is an error naming its file, not
// a hang; once it finishes, a later wait sees it done.
TEST(HostStager, AStalledReadIsAnErrorAfterTheLimit) {
  test::TempDir dir;
  const std::vector<uint8_t> bytes = pattern(4096, 9);
  test::write_file(dir.file("shard.bin"), std::string(bytes.begin(), bytes.end()));
  std::vector<uint8_t> dst(4096, 0);
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  HostStager stager(1, std::chrono::milliseconds(100));
  const uint64_t t = stager.submit({{nullptr, dst.data(), 4096, dir.file("shard.bin"), 0}}, [open] { open.wait(); });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW_WITH(stager.wait(t), std::runtime_error, "did not finish job 1", dir.file("shard.bin"), "within 0.1 s",
                    "stalled");
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(100));
  gate.set_value();
  stager.wait(t);
  EXPECT_EQ(dst, bytes);
}

// What `before` throws comes back from wait(); the stager goes on with the next job.
TEST(HostStager, AFailedJobReportsAndTheNextRuns) {
  HostStager stager(2);
  std::vector<uint8_t> src = pattern(100, 3), dst(100, 0);
  const uint64_t bad = stager.submit({{src.data(), dst.data(), 100}},
                                     [] { throw std::runtime_error("the DMA out of this buffer failed"); });
  const uint64_t good = stager.submit({{src.data(), dst.data(), 100}});
  try {
    stager.wait(bad);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "the DMA out of this buffer failed");
  }
  stager.wait(good);
  EXPECT_EQ(dst, src);
  EXPECT_EQ(stager.stats().bytes, 100u);  // the failed job's bytes are not counted as read
}

}  // namespace
}  // namespace cascade::stage
