#include "storage/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tests/test_util.h"

namespace cascade::storage {
namespace {

namespace fs = std::filesystem;

// A writable copy of a fixture, for corrupting.
std::string copy_fixture(const test::TempDir& dir, const std::string& name) {
  const std::string dst = dir.file(name);
  fs::copy(test::fixture(name), dst, fs::copy_options::recursive);
  return dst;
}

TEST(Checkpoint, SingleFile) {
  auto ck = Checkpoint::open(test::fixture("llama_gqa"));
  EXPECT_EQ(ck->config()["model_type"], "llama");
  EXPECT_TRUE(ck->has("model.embed_tokens.weight"));
  EXPECT_EQ(ck->info("model.embed_tokens.weight").shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(ck->bytes_read(), 0u);  // opening reads headers only
  at::Tensor w = ck->load("model.norm.weight", at::kBFloat16);
  EXPECT_EQ(w.scalar_type(), at::kBFloat16);
  EXPECT_EQ(ck->bytes_read(), 64u * 4);
  EXPECT_THROW_WITH(ck->info("model.nope"), StorageError, "tensor 'model.nope'", "llama_gqa");
}

TEST(Checkpoint, ShardedIndexCoversEveryShard) {
  auto ck = Checkpoint::open(test::fixture("llama_linear_sharded_f16"));
  const auto idx = test::read_json(test::fixture("llama_linear_sharded_f16") + "/model.safetensors.index.json");
  EXPECT_EQ(ck->tensor_names().size(), idx["weight_map"].size());
  EXPECT_EQ(ck->total_bytes(), idx["metadata"]["total_size"].get<uint64_t>());
  EXPECT_EQ(ck->info("lm_head.weight").dtype, at::kHalf);
  EXPECT_EQ(ck->file_of("lm_head.weight").path(),
            test::fixture("llama_linear_sharded_f16") + "/" + idx["weight_map"]["lm_head.weight"].get<std::string>());
  // Conversion at load: f16 -> f32 is exact.
  at::Tensor h = ck->view("lm_head.weight");
  at::Tensor f = ck->load("lm_head.weight", at::kFloat);
  EXPECT_TRUE(at::equal(h.to(at::kFloat), f));
}

TEST(Checkpoint, MissingShardIsNamed) {
  test::TempDir dir;
  const std::string ck = copy_fixture(dir, "llama_linear_sharded_f16");
  fs::remove(ck + "/model-00003-of-00008.safetensors");
  EXPECT_THROW_WITH(Checkpoint::open(ck), StorageError, "shard 'model-00003-of-00008.safetensors'", "is missing");
}

TEST(Checkpoint, TensorMissingFromItsShard) {
  test::TempDir dir;
  const std::string ck = copy_fixture(dir, "llama_linear_sharded_f16");
  auto idx = test::read_json(ck + "/model.safetensors.index.json");
  idx["weight_map"]["model.norm.weight"] = "model-00001-of-00008.safetensors";
  test::write_file(ck + "/model.safetensors.index.json", idx.dump());
  EXPECT_THROW_WITH(Checkpoint::open(ck), StorageError, "model-00001-of-00008.safetensors",
                    "tensor 'model.norm.weight'", "missing from this shard");
}

TEST(Checkpoint, TruncatedShardIsNamed) {
  test::TempDir dir;
  const std::string ck = copy_fixture(dir, "llama_gqa");
  const std::string f = ck + "/model.safetensors";
  fs::resize_file(f, fs::file_size(f) - 100);
  EXPECT_THROW_WITH(Checkpoint::open(ck), StorageError, "model.safetensors", "run past the end", "truncated");
}

TEST(Checkpoint, DirectoryProblems) {
  test::TempDir dir;
  EXPECT_THROW_WITH(Checkpoint::open(dir.file("nope")), StorageError, "not a directory");
  EXPECT_THROW_WITH(Checkpoint::open(dir.path()), StorageError, "config.json is missing");
  test::write_file(dir.file("config.json"), "{\"model_type\": \"llama\"}");
  test::write_file(dir.file("pytorch_model.bin"), "x");
  EXPECT_THROW_WITH(Checkpoint::open(dir.path()), StorageError, "no model.safetensors", "pytorch_model.bin");
  test::write_file(dir.file("config.json"), "{bad json");
  EXPECT_THROW_WITH(Checkpoint::open(dir.path()), StorageError, "config.json", "not valid JSON");
}

}  // namespace
}  // namespace cascade::storage
