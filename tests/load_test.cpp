#include "stage/load.h"

#include <unistd.h>

#include <sstream>

#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

comm::Assignment assignment(const std::string& dir, std::vector<int64_t> modules = {}) {
  comm::Assignment a;
  a.label = "stage 1 (rank 1, cpu)";
  a.model_dir = dir;
  a.dtype = "float32";
  a.device = "cpu";
  a.modules = std::move(modules);
  a.runtime.max_batch = 2;
  a.runtime.max_seq_len = 16;
  return a;
}

TEST(LoadStage, NamesTheDeviceOfAnAssignment) {
  comm::Assignment a;
  for (const char* cpu : {"cpu", "cpu:0", "cpu:3"}) {
    a.device = cpu;
    EXPECT_EQ(assigned_device(a), at::Device(at::kCPU)) << cpu;
  }
  a.device = "cuda:1";
  EXPECT_EQ(assigned_device(a), at::Device(at::kCUDA, 1));
}

// The ready report says what was loaded, by whom and in what time; progress ends at
// the total; a CPU stage starts no device.
TEST(LoadStage, LoadsTheAssignedModulesAndReportsThem) {
  const std::string dir = test::fixture("llama_gqa");
  const auto ck = storage::Checkpoint::open(dir);
  std::vector<comm::LoadProgress> seen;
  std::ostringstream log;
  const comm::Assignment a = assignment(dir, {0, 1});
  LoadedStage st = load_stage(
      a, assigned_device(a), "this host", [&](const comm::LoadProgress& p) { seen.push_back(p); }, log);
  ASSERT_TRUE(st.model);
  EXPECT_EQ(st.model->loaded(), (std::vector<int64_t>{0, 1}));
  EXPECT_TRUE(st.ready.ok);
  EXPECT_EQ(st.ready.host, "this host");
  EXPECT_EQ(st.ready.pid, ::getpid());
  EXPECT_GT(st.ready.cores, 0);
  EXPECT_EQ(st.ready.device_start_s, 0);
  EXPECT_GT(st.ready.seconds, 0);
  EXPECT_GT(st.ready.source_bytes, 0u);
  EXPECT_LT(st.ready.source_bytes, ck->total_bytes());  // two modules, not the whole checkpoint
  EXPECT_GT(st.ready.kv_bytes, 0u);                     // module 1 is a decoder layer
  EXPECT_EQ(st.ready.upload.bytes, 0u);                 // no device upload on the CPU
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().bytes, seen.back().total);
  EXPECT_EQ(seen.back().total, st.ready.source_bytes);
}

TEST(LoadStage, AMissingCheckpointIsNamed) {
  const comm::Assignment a = assignment("/nonexistent/model");
  std::ostringstream log;
  EXPECT_THROW_WITH(load_stage(a, assigned_device(a), "h", nullptr, log), std::exception, "/nonexistent/model");
}

}  // namespace
}  // namespace cascade::stage
