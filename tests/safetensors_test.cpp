#include "storage/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "tests/test_util.h"

namespace cascade::storage {
namespace {

// Builds the bytes of a safetensors file from a header and a data section.
std::string file_bytes(const nlohmann::json& header, const std::string& data) {
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';  // the reference writer pads with spaces
  uint64_t n = h.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + h + data;
}

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

class SafetensorsTest : public ::testing::Test {
 protected:
  std::string write(const nlohmann::json& header, const std::string& data) {
    const std::string path = dir_.file("m.safetensors");
    test::write_file(path, file_bytes(header, data));
    return path;
  }
  test::TempDir dir_;
};

TEST_F(SafetensorsTest, ReadsTensorsAsZeroCopyViews) {
  nlohmann::json h = {{"a", {{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}},
                      {"b", {{"dtype", "I64"}, {"shape", {1}}, {"data_offsets", {16, 24}}}},
                      {"__metadata__", {{"format", "pt"}}}};
  int64_t seven = 7;
  const std::string path = write(h, floats({1, 2, 3, 4}) + std::string(reinterpret_cast<const char*>(&seven), 8));
  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), 2u);
  const TensorInfo* a = f->find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, at::kFloat);
  at::Tensor t = f->view(*a);
  EXPECT_EQ(t.data_ptr(), static_cast<const void*>(f->data(*a)));  // no copy
  EXPECT_TRUE(at::equal(t, at::tensor({1.f, 2.f, 3.f, 4.f}).view({2, 2})));
  EXPECT_EQ(f->view(*f->find("b")).item<int64_t>(), 7);
  EXPECT_EQ(f->find("missing"), nullptr);
}

TEST_F(SafetensorsTest, ViewOutlivesTheFileHandle) {
  nlohmann::json h = {{"a", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 12}}}}};
  at::Tensor t;
  {
    auto f = SafetensorsFile::open(write(h, floats({5, 6, 7})));
    t = f->view(*f->find("a"));
  }
  EXPECT_FLOAT_EQ(t[2].item<float>(), 7.f);
}

TEST_F(SafetensorsTest, IntegerDtypesAreReadable) {
  std::string data;
  const int8_t i8[2] = {-3, 4};
  const uint8_t u8[2] = {250, 1};
  const int32_t i32[2] = {-100000, 7};
  data.append(reinterpret_cast<const char*>(i8), 2);
  data.append(reinterpret_cast<const char*>(u8), 2);
  data.append(4, '\0');  // pad so I32 is aligned
  data.append(reinterpret_cast<const char*>(i32), 8);
  nlohmann::json h = {{"i8", {{"dtype", "I8"}, {"shape", {2}}, {"data_offsets", {0, 2}}}},
                      {"u8", {{"dtype", "U8"}, {"shape", {2}}, {"data_offsets", {2, 4}}}},
                      {"i32", {{"dtype", "I32"}, {"shape", {2}}, {"data_offsets", {8, 16}}}}};
  auto f = SafetensorsFile::open(write(h, data));
  EXPECT_EQ(f->view(*f->find("i8"))[0].item<int64_t>(), -3);
  EXPECT_EQ(f->view(*f->find("u8"))[0].item<int64_t>(), 250);
  EXPECT_EQ(f->view(*f->find("i32"))[0].item<int64_t>(), -100000);
}

TEST_F(SafetensorsTest, MisalignedDataIsCopiedNotMisread) {
  std::string data = "x" + floats({1.5f, 2.5f});
  nlohmann::json h = {{"pad", {{"dtype", "U8"}, {"shape", {1}}, {"data_offsets", {0, 1}}}},
                      {"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {1, 9}}}}};
  auto f = SafetensorsFile::open(write(h, data));
  at::Tensor t = f->view(*f->find("a"));
  EXPECT_FLOAT_EQ(t[1].item<float>(), 2.5f);
}

TEST_F(SafetensorsTest, TruncatedBelowHeaderLength) {
  test::write_file(dir_.file("m.safetensors"), "abc");
  EXPECT_THROW_WITH(SafetensorsFile::open(dir_.file("m.safetensors")), StorageError, "m.safetensors", "truncated",
                    "3 bytes");
}

TEST_F(SafetensorsTest, HeaderLengthPastEnd) {
  uint64_t n = 1000;
  test::write_file(dir_.file("m.safetensors"), std::string(reinterpret_cast<const char*>(&n), 8) + "{}");
  EXPECT_THROW_WITH(SafetensorsFile::open(dir_.file("m.safetensors")), StorageError, "m.safetensors",
                    "header length 1000 runs past the end");
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  uint64_t n = 8;
  test::write_file(dir_.file("m.safetensors"), std::string(reinterpret_cast<const char*>(&n), 8) + "{nope!!}");
  EXPECT_THROW_WITH(SafetensorsFile::open(dir_.file("m.safetensors")), StorageError, "m.safetensors", "not valid JSON");
}

TEST_F(SafetensorsTest, DataOffsetsOutOfRange) {
  nlohmann::json h = {{"w", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}}};
  EXPECT_THROW_WITH(SafetensorsFile::open(write(h, floats({1, 2}))), StorageError, "m.safetensors", "tensor 'w'",
                    "run past the end", "truncated");
}

TEST_F(SafetensorsTest, ShapeByteCountMismatch) {
  nlohmann::json h = {{"w", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 16}}}}};
  EXPECT_THROW_WITH(SafetensorsFile::open(write(h, floats({1, 2, 3, 4}))), StorageError, "tensor 'w'",
                    "shape [3] of F32 needs 12 bytes but data_offsets cover 16");
}

TEST_F(SafetensorsTest, DtypeMismatchIsAByteCountMismatch) {
  nlohmann::json h = {{"w", {{"dtype", "BF16"}, {"shape", {4}}, {"data_offsets", {0, 16}}}}};
  EXPECT_THROW_WITH(SafetensorsFile::open(write(h, floats({1, 2, 3, 4}))), StorageError, "tensor 'w'",
                    "of BF16 needs 8 bytes");
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  nlohmann::json h = {{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
                      {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}}}};
  EXPECT_THROW_WITH(SafetensorsFile::open(write(h, floats({1, 2, 3}))), StorageError, "'a' and 'b' overlap");
}

TEST_F(SafetensorsTest, UnsupportedDtypeAndMalformedEntries) {
  nlohmann::json h = {{"w", {{"dtype", "F8_E4M3"}, {"shape", {4}}, {"data_offsets", {0, 4}}}}};
  EXPECT_THROW_WITH(SafetensorsFile::open(write(h, "abcd")), StorageError, "tensor 'w'", "F8_E4M3", "unsupported");
  nlohmann::json h2 = {{"w", {{"dtype", "F32"}, {"shape", {-1}}, {"data_offsets", {0, 4}}}}};
  EXPECT_THROW_WITH(SafetensorsFile::open(write(h2, "abcd")), StorageError, "tensor 'w'", "shape");
  nlohmann::json h3 = {{"w", {{"dtype", "F32"}, {"shape", {1}}}}};
  EXPECT_THROW_WITH(SafetensorsFile::open(write(h3, "abcd")), StorageError, "tensor 'w'", "data_offsets");
  nlohmann::json h4 = {{"w", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {8, 4}}}}};
  EXPECT_THROW_WITH(SafetensorsFile::open(write(h4, "abcdefgh")), StorageError, "tensor 'w'", "reversed");
}

TEST_F(SafetensorsTest, MissingFile) {
  EXPECT_THROW_WITH(SafetensorsFile::open(dir_.file("nope.safetensors")), StorageError, "nope.safetensors",
                    "cannot open");
}

TEST_F(SafetensorsTest, WriterRoundTripsEveryDtypeAndAdvicePreservesData) {
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", at::arange(6, at::kFloat).view({2, 3})},
      {"bf16", at::arange(5, at::kBFloat16)},
      {"f16", at::arange(3, at::kHalf)},
      {"i8", at::arange(-2, 2, at::kChar)},
      {"i64", at::tensor({int64_t{1} << 40}, at::kLong)},
      {"strided", at::arange(6, at::kFloat).view({2, 3}).t()},
      {"empty", at::empty({0, 4}, at::kFloat)}};
  const std::string path = dir_.file("w.safetensors");
  write_safetensors(path, tensors, {{"format", "cascade-offload"}});
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  auto f = SafetensorsFile::open(path);
  for (const auto& [name, t] : tensors) {
    const TensorInfo* info = f->find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f->data(*info)) % t.element_size(), 0u) << name << ": aligned";
    f->advise(*info, SafetensorsFile::Advice::kWillNeed);
    f->advise(*info, SafetensorsFile::Advice::kDontNeed);
    EXPECT_TRUE(at::equal(f->view(*info), t.contiguous())) << name;
  }
  EXPECT_THROW_WITH(write_safetensors(dir_.file("no/such/dir/x.safetensors"), tensors), StorageError,
                    "no/such/dir/x.safetensors.tmp", "cannot create");
}

TEST(Dtype, ParseNames) {
  EXPECT_EQ(parse_dtype("bfloat16"), at::kBFloat16);
  EXPECT_EQ(parse_dtype("float16"), at::kHalf);
  EXPECT_EQ(parse_dtype("float32"), at::kFloat);
  EXPECT_THROW(parse_dtype("int4"), std::invalid_argument);
  EXPECT_STREQ(dtype_name(at::kBFloat16), "bfloat16");
}

}  // namespace
}  // namespace cascade::storage
