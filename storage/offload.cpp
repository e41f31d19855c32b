#include "storage/offload.h"

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <ostream>
#include <set>
#include <stdexcept>

namespace cascade::storage {
namespace {

constexpr int kManifestVersion = 1;
constexpr const char* kWeightsFile = "weights.safetensors";
constexpr const char* kManifestFile = "manifest.json";

// Why `folder` cannot be reused for `want` (empty: it can).
std::string stale_reason(const std::string& folder, const nlohmann::json& want,
                         std::shared_ptr<SafetensorsFile>* file) {
  std::ifstream in(folder + "/" + kManifestFile);
  if (!in) return "no manifest";
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return "the manifest is not valid JSON";
  }
  if (!m.is_object() || m.value("version", 0) != kManifestVersion) return "the manifest has another version";
  if (m.value("fingerprint", nlohmann::json()) != want["fingerprint"]) return "the checkpoint or dtype changed";
  if (m.value("int8", nlohmann::json::array()) != want["int8"]) return "the quantization changed";
  if (m.value("tensors", nlohmann::json()) != want["tensors"]) return "the plan puts other tensors on disk";
  try {
    *file = SafetensorsFile::open(folder + "/" + kWeightsFile);
  } catch (const StorageError& e) {
    return std::string("its weights file is unreadable (") + e.what() + ")";
  }
  if ((*file)->file_size() != m.value("file_bytes", uint64_t{0})) return "its weights file has the wrong size";
  for (const auto& n : want["tensors"]) {
    if (!(*file)->find(n.get<std::string>())) return "tensor '" + n.get<std::string>() + "' is missing";
  }
  for (const auto& n : want["int8"]) {
    const TensorInfo* q = (*file)->find(n.get<std::string>());
    if (!q || q->dtype != at::kChar || !(*file)->find(n.get<std::string>() + ":scale"))
      return "int8 tensor '" + n.get<std::string>() + "' is missing or not int8";
  }
  return "";
}

}  // namespace

nlohmann::json fingerprint(const Checkpoint& ck, at::ScalarType dtype) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& path : ck.files()) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw StorageError(path + ": cannot stat");
    const int64_t mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    files.push_back({{"file", std::filesystem::path(path).filename().string()},
                     {"bytes", static_cast<uint64_t>(st.st_size)},
                     {"mtime_ns", mtime_ns}});
  }
  return {{"files", files}, {"dtype", dtype_name(dtype)}};
}

std::unique_ptr<DiskTier> DiskTier::open(std::shared_ptr<const Checkpoint> ck, const std::vector<std::string>& names,
                                         at::ScalarType dtype, const std::string& folder, std::ostream& log,
                                         const std::vector<std::string>& int8, const Quantize& quantize) {
  std::unique_ptr<DiskTier> d(new DiskTier());
  d->ck_ = ck;
  std::set<std::string> q(int8.begin(), int8.end());
  if (!q.empty() && !quantize) throw std::logic_error("int8 disk-tier tensors need a quantize function");
  std::vector<std::string> convert;
  for (const auto& n : names) {
    const TensorInfo& info = ck->info(n);
    if (q.count(n)) {
      convert.push_back(n);
    } else if (info.dtype == dtype || !at::isFloatingType(info.dtype)) {
      d->where_[n] = {&ck->file_of(n), &info};
      d->zero_copy_bytes_ += info.nbytes();
    } else {
      convert.push_back(n);
    }
  }
  if (convert.empty()) return d;

  std::sort(convert.begin(), convert.end());
  std::vector<std::string> quantized;
  for (const auto& n : convert)
    if (q.count(n)) quantized.push_back(n);
  const nlohmann::json want = {{"fingerprint", fingerprint(*ck, dtype)}, {"tensors", convert}, {"int8", quantized}};
  std::string reason = stale_reason(folder, want, &d->converted_);
  if (!reason.empty()) {
    log << "cascade: offload folder " << folder << ": " << reason << "; converting " << convert.size() << " tensors to "
        << dtype_name(dtype) << (quantized.empty() ? "" : " (" + std::to_string(quantized.size()) + " as int8)")
        << "\n";
    d->converted_.reset();
    std::error_code ec;
    std::filesystem::create_directories(folder, ec);
    if (ec) throw StorageError(folder + ": cannot create the offload folder: " + ec.message());
    std::filesystem::remove(folder + "/" + kManifestFile, ec);  // invalid until rewritten
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& n : convert) {
      if (!q.count(n)) {
        tensors.emplace_back(n, ck->load(n, dtype));
        continue;
      }
      auto [rows, scale] = quantize(n, ck->load(n, at::kFloat));
      tensors.emplace_back(n, rows);
      tensors.emplace_back(n + ":scale", scale);
    }
    write_safetensors(folder + "/" + kWeightsFile, tensors, {{"format", "cascade-offload"}});
    tensors.clear();
    struct stat st {};
    ::stat((folder + "/" + kWeightsFile).c_str(), &st);
    nlohmann::json manifest = want;
    manifest["version"] = kManifestVersion;
    manifest["file_bytes"] = static_cast<uint64_t>(st.st_size);
    const std::string tmp = folder + "/" + kManifestFile + ".tmp";
    {
      std::ofstream out(tmp);
      out << manifest.dump(1) << "\n";
      if (!out) throw StorageError(tmp + ": cannot write the offload manifest");
    }
    std::filesystem::rename(tmp, folder + "/" + kManifestFile, ec);
    if (ec) throw StorageError(folder + ": cannot write the offload manifest: " + ec.message());
    d->converted_ = SafetensorsFile::open(folder + "/" + kWeightsFile);
    d->rebuilt_ = true;
    log << "cascade: offload folder " << folder << ": wrote " << st.st_size << " bytes in " << std::fixed
        << std::setprecision(2) << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()
        << " s\n";
  } else {
    log << "cascade: offload folder " << folder << ": reusing " << convert.size() << " converted tensors\n";
  }
  for (const auto& n : convert) {
    for (const std::string& t : q.count(n) ? std::vector<std::string>{n, n + ":scale"} : std::vector<std::string>{n}) {
      const TensorInfo* info = d->converted_->find(t);
      d->where_[t] = {d->converted_.get(), info};
      d->folder_bytes_ += info->nbytes();
    }
  }
  return d;
}

at::Tensor DiskTier::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw StorageError("tensor '" + name + "' is not on the disk tier");
  return it->second.file->view(*it->second.info);
}

DiskTier::FileRange DiskTier::file_range(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw StorageError("tensor '" + name + "' is not on the disk tier");
  return {it->second.file->path(), it->second.file->file_offset(*it->second.info)};
}

void DiskTier::will_need(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) it->second.file->advise(*it->second.info, SafetensorsFile::Advice::kWillNeed);
}

void DiskTier::dont_need(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) it->second.file->advise(*it->second.info, SafetensorsFile::Advice::kDontNeed);
}

}  // namespace cascade::storage
