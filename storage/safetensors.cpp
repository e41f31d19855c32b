#include "storage/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

namespace cascade::storage {
namespace {

// Headers beyond this are refused, as the reference implementation does.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

}  // namespace

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

at::ScalarType scalar_type_from_safetensors(const std::string& name) {
  if (name == "F32") return at::kFloat;
  if (name == "F16") return at::kHalf;
  if (name == "BF16") return at::kBFloat16;
  if (name == "F64") return at::kDouble;
  if (name == "I64") return at::kLong;
  if (name == "I32") return at::kInt;
  if (name == "I16") return at::kShort;
  if (name == "I8") return at::kChar;
  if (name == "U8") return at::kByte;
  if (name == "BOOL") return at::kBool;
  throw StorageError("unsupported safetensors dtype '" + name +
                     "' (supported: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
}

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return at::kHalf;
  throw std::invalid_argument("unknown dtype '" + name + "' (expected float32, bfloat16 or float16)");
}

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    case at::kDouble:
      return "float64";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kShort:
      return "int16";
    case at::kChar:
      return "int8";
    case at::kByte:
      return "uint8";
    case at::kBool:
      return "bool";
    default:
      return "unknown";
  }
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw StorageError(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw StorageError(path + ": cannot stat: " + std::strerror(err));
  }
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    throw StorageError(path + ": file is truncated: " + std::to_string(f->size_) +
                       " bytes, shorter than the 8-byte header length");
  }
  void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) throw StorageError(path + ": mmap failed: " + std::strerror(err));
  f->base_ = static_cast<uint8_t*>(p);
  f->parse_header();
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (base_) ::munmap(base_, size_);
}

void SafetensorsFile::parse_header() {
  uint64_t n = 0;
  std::memcpy(&n, base_, 8);  // little-endian on every platform we build for
  if (n > size_ - 8) {
    throw StorageError(path_ + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                       std::to_string(size_) + " bytes); the file is truncated or not safetensors");
  }
  if (n > kMaxHeaderBytes) throw StorageError(path_ + ": header length " + std::to_string(n) + " is implausibly large");
  data_start_ = 8 + n;
  const uint64_t data_size = size_ - data_start_;
  nlohmann::json header;
  try {
    header =
        nlohmann::json::parse(reinterpret_cast<const char*>(base_ + 8), reinterpret_cast<const char*>(base_ + 8 + n));
  } catch (const nlohmann::json::exception& e) {
    throw StorageError(path_ + ": header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw StorageError(path_ + ": header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string where = path_ + ": tensor '" + it.key() + "': ";
    const auto& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets")) {
      throw StorageError(where + "entry must have dtype, shape and data_offsets");
    }
    TensorInfo t;
    t.name = it.key();
    if (!e["dtype"].is_string()) throw StorageError(where + "dtype is not a string");
    t.dtype_name = e["dtype"].get<std::string>();
    try {
      t.dtype = scalar_type_from_safetensors(t.dtype_name);
    } catch (const StorageError& ex) {
      throw StorageError(where + ex.what());
    }
    if (!e["shape"].is_array()) throw StorageError(where + "shape is not an array");
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned()) throw StorageError(where + "shape has a non-integer or negative dimension");
      t.shape.push_back(d.get<int64_t>());
    }
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      throw StorageError(where + "data_offsets must be two non-negative integers");
    }
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.begin > t.end) {
      throw StorageError(where + "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                         "] are reversed");
    }
    if (t.end > data_size) {
      throw StorageError(where + "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                         "] run past the end of the data section (" + std::to_string(data_size) +
                         " bytes); the file is truncated");
    }
    const uint64_t want = static_cast<uint64_t>(t.numel()) * at::elementSize(t.dtype);
    if (want != t.nbytes()) {
      throw StorageError(where + "shape " + shape_str(t.shape) + " of " + t.dtype_name + " needs " +
                         std::to_string(want) + " bytes but data_offsets cover " + std::to_string(t.nbytes()));
    }
    tensors_.emplace(t.name, std::move(t));
  }

  // Overlapping byte ranges mean a corrupt or hand-crafted file.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& [name, t] : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* a = by_offset[i - 1];
    const TensorInfo* b = by_offset[i];
    if (b->begin < a->end && b->nbytes() > 0 && a->nbytes() > 0) {
      throw StorageError(path_ + ": tensors '" + a->name + "' and '" + b->name + "' overlap (bytes " +
                         std::to_string(b->begin) + ".." + std::to_string(a->end) + ")");
    }
  }
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

at::Tensor SafetensorsFile::view(const TensorInfo& info) const {
  const uint8_t* p = data(info);
  const auto opts = at::TensorOptions().dtype(info.dtype).device(at::kCPU);
  if (reinterpret_cast<uintptr_t>(p) % at::elementSize(info.dtype) != 0) {
    at::Tensor out = at::empty(info.shape, opts);
    std::memcpy(out.data_ptr(), p, info.nbytes());
    return out;
  }
  auto self = shared_from_this();
  return at::from_blob(
      const_cast<uint8_t*>(p), info.shape, [self](void*) {}, opts);
}

void SafetensorsFile::advise(const TensorInfo& info, Advice a) const {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(data(info)) & ~(page - 1);
  const auto end = reinterpret_cast<uintptr_t>(data(info)) + info.nbytes();
  if (end <= begin) return;
  // Advisory only: a failure changes speed, never results.
  ::madvise(reinterpret_cast<void*>(begin), end - begin, a == Advice::kWillNeed ? MADV_WILLNEED : MADV_DONTNEED);
}

const char* safetensors_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "F32";
    case at::kBFloat16:
      return "BF16";
    case at::kHalf:
      return "F16";
    case at::kDouble:
      return "F64";
    case at::kChar:
      return "I8";
    case at::kByte:
      return "U8";
    case at::kShort:
      return "I16";
    case at::kInt:
      return "I32";
    case at::kLong:
      return "I64";
    case at::kBool:
      return "BOOL";
    default:
      throw StorageError(std::string("no safetensors dtype for ") + c10::toString(t));
  }
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  // Largest elements first: then every tensor starts at a multiple of its element size
  // (so views need no copy) while the data section stays hole-free, as the format asks.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return tensors[a].second.element_size() > tensors[b].second.element_size();
  });
  uint64_t offset = 0;
  std::vector<at::Tensor> data;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    at::Tensor c = t.to(at::kCPU).contiguous();
    const uint64_t n = static_cast<uint64_t>(c.numel()) * c.element_size();
    header[name] = {{"dtype", safetensors_dtype(c.scalar_type())},
                    {"shape", std::vector<int64_t>(c.sizes().begin(), c.sizes().end())},
                    {"data_offsets", {offset, offset + n}}};
    offset += n;
    data.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw StorageError(tmp + ": cannot create: " + std::strerror(errno));
  const uint64_t len = text.size();
  bool ok = std::fwrite(&len, 8, 1, f) == 1 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const auto& c : data) {
    const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
    ok = ok && (n == 0 || std::fwrite(c.data_ptr(), 1, n, f) == n);
  }
  ok = (std::fflush(f) == 0) && ok && ::fsync(fileno(f)) == 0;
  const int err = errno;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw StorageError(path + ": cannot write: " + std::strerror(ok ? errno : err));
  }
}

}  // namespace cascade::storage
