#include "stage/load.h"

#include <ATen/Parallel.h>
#include <unistd.h>

#include <chrono>
#include <ostream>
#include <thread>

#include "comm/cores.h"
#include "storage/checkpoint.h"
#include "storage/offload.h"

namespace cascade::stage {
namespace {

using comm::Assignment;
using Clock = std::chrono::steady_clock;

// Starts the device's runtime (a CUDA context, one kernel and a read-back) before the
// load, so the ready report can tell this cost apart from reading weights. Seconds; 0
// on a CPU stage.
double start_device(at::Device device) {
  if (!device.is_cuda()) return 0;
  const auto t0 = Clock::now();
  (void)at::zeros({1}, at::TensorOptions().device(device)).item<float>();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

comm::StageReady ready_report(const std::string& host, const Model& m, double seconds) {
  const storage::DiskTier* disk = m.disk_tier();
  const DeviceUploader::Stats& up = m.upload_stats();
  comm::StageReady r;
  r.ok = true;
  r.host = host;
  r.pid = ::getpid();
  const std::vector<int> cores = comm::allowed_cores();
  r.cores = cores.empty() ? static_cast<int>(std::thread::hardware_concurrency()) : static_cast<int>(cores.size());
  r.core_list = comm::core_list(cores);
  r.seconds = seconds;
  r.source_bytes = m.source_bytes();
  r.weight_bytes = m.weight_bytes();
  r.zero_copy_bytes = disk ? disk->zero_copy_bytes() : 0;
  r.folder_bytes = disk ? disk->folder_bytes() : 0;
  r.folder_rebuilt = disk && disk->rebuilt();
  r.kv_bytes = m.kv_cache().bytes();
  r.streamed_bytes = m.streamed_bytes();
  r.stream_slots = m.stream_slots();
  r.upload = {up.bytes, up.read_s, up.dma_wait_s, up.alloc_s, up.finish_s};
  return r;
}

}  // namespace

at::Device assigned_device(const Assignment& a) {
  return at::Device(a.device == "cpu" || a.device.rfind("cpu:", 0) == 0 ? std::string("cpu") : a.device);
}

LoadedStage load_stage(const Assignment& a, at::Device device, const std::string& host, const LoadProgressFn& progress,
                       std::ostream& log) {
  if (const std::string why = comm::pin_to(a.cores); !why.empty())
    log << "cascade " << a.label << ": runs on the cores it was started with: " << why << "\n";
  if (a.threads > 0) at::set_num_threads(a.threads);
  const auto t0 = Clock::now();
  const double device_s = start_device(device);
  auto ck = storage::Checkpoint::open(a.model_dir);
  LoadOptions lo;
  lo.dtype = storage::parse_dtype(a.dtype);
  lo.device = device;
  lo.modules = a.modules;
  lo.disk_modules = a.disk_modules;
  lo.offload_folder = a.offload_folder;
  lo.streamed_modules = a.streamed_modules;
  lo.stream_slots = a.stream_slots;
  lo.runtime = a.runtime;
  lo.quantization = a.quantization;
  lo.log = &log;
  const auto l0 = Clock::now();
  auto last = l0;
  lo.progress = [&](uint64_t done, uint64_t total) {
    if (!progress || (Clock::now() - last < std::chrono::milliseconds(500) && done < total)) return;
    last = Clock::now();
    progress({done, total, std::chrono::duration<double>(Clock::now() - l0).count()});
  };
  LoadedStage out;
  out.model = Model::load(ck, lo);
  out.ready = ready_report(host, *out.model, std::chrono::duration<double>(Clock::now() - t0).count());
  out.ready.device_start_s = device_s;
  return out;
}

}  // namespace cascade::stage
