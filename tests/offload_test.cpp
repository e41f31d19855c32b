#include "storage/offload.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <sstream>

#include "tests/test_util.h"

namespace cascade::storage {
namespace {

// The bytes at d.file_range(name), read with pread as the GPU stream's readers do.
bool file_range_matches(const DiskTier& d, const std::string& name) {
  const at::Tensor t = d.get(name).contiguous();
  const DiskTier::FileRange r = d.file_range(name);
  const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
  std::vector<char> buf(n);
  const int fd = ::open(r.path.c_str(), O_RDONLY);
  const bool ok = fd >= 0 && ::pread(fd, buf.data(), n, static_cast<off_t>(r.offset)) == static_cast<ssize_t>(n);
  if (fd >= 0) ::close(fd);
  return ok && std::memcmp(buf.data(), t.data_ptr(), n) == 0;
}

std::vector<std::string> layer0(const Checkpoint& ck) {
  std::vector<std::string> v;
  for (const auto& n : ck.tensor_names())
    if (n.find("layers.0.") != std::string::npos) v.push_back(n);
  return v;
}

TEST(DiskTier, SameDtypeIsServedFromTheShardsWithoutCopies) {
  auto ck = Checkpoint::open(test::fixture("llama3_tied_bf16"));  // stored bf16
  test::TempDir dir;
  std::ostringstream log;
  const auto names = layer0(*ck);
  auto d = DiskTier::open(ck, names, at::kBFloat16, dir.file("off"), log);
  uint64_t bytes = 0;
  for (const auto& n : names) {
    bytes += ck->info(n).nbytes();
    const at::Tensor t = d->get(n);
    EXPECT_EQ(static_cast<const void*>(t.data_ptr()), static_cast<const void*>(ck->file_of(n).data(ck->info(n))))
        << n << " is not a view of the shard";
    d->will_need(n);
    d->dont_need(n);
    EXPECT_TRUE(at::equal(t, ck->load(n, at::kBFloat16)));  // still readable after dropping
    EXPECT_TRUE(file_range_matches(*d, n)) << n;
  }
  EXPECT_EQ(d->zero_copy_bytes(), bytes);
  EXPECT_EQ(d->folder_bytes(), 0u);
  EXPECT_FALSE(std::filesystem::exists(dir.file("off")));
}

TEST(DiskTier, OtherDtypesAreConvertedOnceAndReused) {
  auto ck = Checkpoint::open(test::fixture("llama3_tied_bf16"));
  test::TempDir dir;
  const auto names = layer0(*ck);
  std::ostringstream log1, log2;
  {
    auto d = DiskTier::open(ck, names, at::kFloat, dir.file("off"), log1);
    EXPECT_TRUE(d->rebuilt());
    EXPECT_GT(d->folder_bytes(), 0u);
    for (const auto& n : names) {
      EXPECT_TRUE(at::equal(d->get(n), ck->load(n, at::kFloat))) << n;
      EXPECT_TRUE(file_range_matches(*d, n)) << n << " in the offload folder";
    }
  }
  EXPECT_NE(log1.str().find("no manifest; converting"), std::string::npos) << log1.str();
  const auto manifest = test::read_json(dir.file("off/manifest.json"));
  EXPECT_EQ(manifest["fingerprint"]["dtype"], "float32");
  EXPECT_EQ(manifest["tensors"].size(), names.size());
  auto d2 = DiskTier::open(ck, names, at::kFloat, dir.file("off"), log2);
  EXPECT_FALSE(d2->rebuilt());
  EXPECT_NE(log2.str().find("reusing"), std::string::npos);
}

TEST(DiskTier, Int8TensorsAreStoredQuantizedAndTheManifestSaysSo) {
  auto ck = Checkpoint::open(test::fixture("llama_gqa"));
  test::TempDir dir;
  const auto names = layer0(*ck);
  std::vector<std::string> q;
  for (const auto& n : names)
    if (n.find("proj.weight") != std::string::npos) q.push_back(n);
  ASSERT_FALSE(q.empty());
  // A stand-in rule (storage knows none): per-row absmax to [-127, 127].
  auto quantize = [](const std::string&, const at::Tensor& w) {
    const at::Tensor scale = w.abs().amax(1).clamp_min(1e-12) / 127;
    return std::make_pair((w / scale.unsqueeze(1)).round().to(at::kChar), scale);
  };
  std::ostringstream log1, log2, log3;
  {
    auto d = DiskTier::open(ck, names, at::kFloat, dir.file("off"), log1, q, quantize);
    for (const auto& n : q) {
      const at::Tensor rows = d->get(n), scale = d->get(n + ":scale");
      EXPECT_EQ(rows.scalar_type(), at::kChar) << n;
      EXPECT_EQ(scale.scalar_type(), at::kFloat) << n;
      const auto [want_rows, want_scale] = quantize(n, ck->load(n, at::kFloat));
      EXPECT_TRUE(at::equal(rows, want_rows)) << n;
      EXPECT_TRUE(at::equal(scale, want_scale)) << n;
    }
    for (const auto& n : names) {
      if (std::find(q.begin(), q.end(), n) == q.end()) {
        EXPECT_EQ(d->get(n).scalar_type(), at::kFloat) << n;
      }
    }
  }
  EXPECT_NE(log1.str().find("as int8"), std::string::npos) << log1.str();
  EXPECT_EQ(test::read_json(dir.file("off/manifest.json"))["int8"].size(), q.size());
  EXPECT_FALSE(DiskTier::open(ck, names, at::kFloat, dir.file("off"), log2, q, quantize)->rebuilt());
  const std::vector<std::string> fewer(q.begin() + 1, q.end());  // one projection less is int8
  auto other = DiskTier::open(ck, names, at::kFloat, dir.file("off"), log3, fewer, quantize);
  EXPECT_TRUE(other->rebuilt());
  EXPECT_NE(log3.str().find("the quantization changed"), std::string::npos) << log3.str();
  EXPECT_EQ(other->get(q.front()).scalar_type(), at::kFloat);
  EXPECT_FALSE(other->has(q.front() + ":scale"));
  std::ostringstream log4;  // without int8, float32 tensors stored as float32 come from the shards again
  auto plain = DiskTier::open(ck, names, at::kFloat, dir.file("off"), log4);
  EXPECT_EQ(plain->folder_bytes(), 0u);
  EXPECT_EQ(plain->get(q.front()).scalar_type(), at::kFloat);
}

// Each way a folder goes stale or bad is detected, named, and rebuilt.
TEST(DiskTier, StaleOrCorruptFoldersAreRebuilt) {
  test::TempDir dir;
  std::filesystem::copy(test::fixture("llama3_tied_bf16"), dir.file("model"));
  auto names = layer0(*Checkpoint::open(dir.file("model")));
  auto open = [&](const std::vector<std::string>& which) {
    std::ostringstream log;
    auto ck = Checkpoint::open(dir.file("model"));
    auto d = DiskTier::open(ck, which, at::kFloat, dir.file("off"), log);
    for (const auto& n : which) EXPECT_TRUE(at::equal(d->get(n), ck->load(n, at::kFloat)));
    return std::make_pair(d->rebuilt(), log.str());
  };
  EXPECT_TRUE(open(names).first);
  EXPECT_FALSE(open(names).first);

  std::filesystem::resize_file(dir.file("off/weights.safetensors"), 50);
  auto r = open(names);
  EXPECT_TRUE(r.first);
  EXPECT_NE(r.second.find("unreadable"), std::string::npos) << r.second;

  test::write_file(dir.file("off/manifest.json"), "{not json");
  r = open(names);
  EXPECT_TRUE(r.first);
  EXPECT_NE(r.second.find("not valid JSON"), std::string::npos) << r.second;

  names.pop_back();
  r = open(names);
  EXPECT_TRUE(r.first);
  EXPECT_NE(r.second.find("other tensors"), std::string::npos) << r.second;

  const auto shard = dir.file("model/model.safetensors");
  std::filesystem::last_write_time(shard, std::filesystem::last_write_time(shard) + std::chrono::seconds(5));
  r = open(names);
  EXPECT_TRUE(r.first);
  EXPECT_NE(r.second.find("checkpoint or dtype changed"), std::string::npos) << r.second;
}

TEST(DiskTier, UnknownTensorsAreErrors) {
  auto ck = Checkpoint::open(test::fixture("llama_gqa"));
  test::TempDir dir;
  std::ostringstream log;
  auto d = DiskTier::open(ck, {}, at::kFloat, dir.file("off"), log);
  EXPECT_THROW_WITH(d->get("model.norm.weight"), StorageError, "not on the disk tier");
  EXPECT_THROW(DiskTier::open(ck, {"no.such.tensor"}, at::kFloat, dir.file("off"), log), StorageError);
}

}  // namespace
}  // namespace cascade::storage
