// DeviceUploader: host and file bytes to a GPU through two pinned chunks. Without a GPU
// only the factory's contract is checked; with one, tensors larger than a chunk.
#include "stage/weights/device_upload.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/test_util.h"

namespace cascade::stage {
namespace {

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
  EXPECT_THROW(up->upload_file(dir.file("missing"), 0, {4}, at::kFloat), std::runtime_error);
}

}  // namespace
}  // namespace cascade::stage
