// DeviceUploader: host and file bytes to a GPU through two pinned chunks. Without a GPU
// the packing of copies into chunks and the factory's contract are checked; with one,
// tensors larger than a chunk, many smaller than one, and sources dropped at once.
#include "stage/weights/device_upload.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/test_util.h"

namespace cascade::stage {
namespace {

// Every byte of every copy lands once, in order, inside a chunk, at an aligned offset.
TEST(ChunkPacker, PacksAlignedPiecesThatCoverEachCopyOnce) {
  const uint64_t chunk = 4 * ChunkPacker::kAlign;
  ChunkPacker packer(chunk);
  const std::vector<uint64_t> sizes = {10, 4096, 1, 3 * 4096 + 5, 9 * 4096, 4096 - 1, 2};
  std::vector<char> src(1 << 20), dst(1 << 20);
  std::vector<std::vector<StagedPiece>> chunks;
  uint64_t off = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    StagedPiece p;
    if (i % 2) {
      p.src = src.data() + off;
    } else {
      p.file = "f" + std::to_string(i);
      p.file_offset = 100 + off;
    }
    p.dst = dst.data() + off;
    p.bytes = sizes[i];
    for (auto& c : packer.add(p)) chunks.push_back(std::move(c));
    off += sizes[i];
  }
  ASSERT_FALSE(packer.empty());
  chunks.push_back(packer.take());
  EXPECT_TRUE(packer.empty());
  EXPECT_TRUE(packer.take().empty());
  uint64_t next = 0;  // the next destination byte expected
  for (const auto& c : chunks) {
    uint64_t end = 0;
    for (const StagedPiece& p : c) {
      EXPECT_EQ(p.at % ChunkPacker::kAlign, 0u);
      EXPECT_GE(p.at, end);  // no overlap with the piece before
      EXPECT_LE(p.at + p.bytes, chunk);
      end = p.at + p.bytes;
      const uint64_t d = static_cast<uint64_t>(p.dst - dst.data());
      EXPECT_EQ(d, next);
      if (p.src) {
        EXPECT_EQ(p.src, src.data() + d);
        EXPECT_TRUE(p.file.empty());
      } else {
        EXPECT_EQ(p.file_offset, 100 + d);
      }
      next += p.bytes;
    }
  }
  EXPECT_EQ(next, off);
  // 10 | 4096 | 1 | 3*4096+5 -> ... the first chunk holds the first three and the start
  // of the fourth; a full chunk is handed back as soon as it fills.
  ASSERT_GE(chunks.size(), 4u);
  EXPECT_EQ(chunks[0].size(), 4u);
  EXPECT_EQ(chunks[0][3].at, 3 * ChunkPacker::kAlign);
  EXPECT_EQ(chunks[0][3].bytes, ChunkPacker::kAlign);
  EXPECT_THROW(ChunkPacker(ChunkPacker::kAlign - 1), std::invalid_argument);
}

TEST(DeviceUploader, OnlyForCudaDevices) { EXPECT_EQ(DeviceUploader::create(at::kCPU), nullptr); }

TEST(DeviceUploader, TensorsAndFileRangesArriveIntact) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  auto up = DeviceUploader::create(at::Device(at::kCUDA, 0), /*chunk_bytes=*/4096);  // many chunks per tensor
  const at::Tensor a = at::randn({1000, 7}), b = at::randint(0, 100, {3333}, at::kLong);
  const at::Tensor da = up->upload(a), db = up->upload(b);
  test::TempDir dir;
  const std::string path = dir.file("blob");
  {
    std::ofstream f(path, std::ios::binary);
    f.write("header..", 8);
    f.write(static_cast<const char*>(a.data_ptr()), static_cast<std::streamsize>(a.numel() * 4));
  }
  const at::Tensor fa = up->upload_file(path, 8, a.sizes(), at::kFloat);
  up->finish();
  EXPECT_TRUE(at::equal(da.cpu(), a));
  EXPECT_TRUE(at::equal(db.cpu(), b));
  EXPECT_TRUE(at::equal(fa.cpu(), a));
  // A file that cannot be read fails the upload by the time finish() returns, naming it.
  auto upload_missing = [&] {
    up->upload_file(dir.file("missing"), 0, {4}, at::kFloat);
    up->finish();
  };
  EXPECT_THROW_WITH(upload_missing(), std::runtime_error, "missing");
}

// Many tensors smaller than a chunk share chunks, carved out of one reservation; host
// sources dropped at once stay alive until read.
TEST(DeviceUploader, SmallTensorsShareChunksAndDroppedSourcesArrive) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  auto up = DeviceUploader::create(at::Device(at::kCUDA, 0), /*chunk_bytes=*/1 << 16);
  up->reserve(uint64_t{4} << 20);  // what the uploads take, and more: the rest stays reserved
  std::vector<at::Tensor> want, got;
  for (int i = 0; i < 200; ++i) {
    at::Tensor t = at::randn({1 + (i * 37) % 3000});
    want.push_back(t.clone());
    got.push_back(up->upload(t));  // `t` is released at the end of this iteration
  }
  up->finish();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(at::equal(got[i].cpu(), want[i])) << i;
  EXPECT_EQ(up->stats().bytes, [&] {
    uint64_t b = 0;
    for (const auto& t : want) b += t.numel() * 4;
    return b;
  }());
}

}  // namespace
}  // namespace cascade::stage
