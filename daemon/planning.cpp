#include "daemon/planning.h"

#include <algorithm>
#include <ostream>

#include "config/size.h"
#include "planner/report.h"
#include "stage/model.h"
#include "stage/quant.h"
#include "storage/checkpoint.h"

#ifdef CASCADE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace cascade::daemon {
namespace {

planner::ModuleKind kind_of(stage::ModuleKind k) {
  switch (k) {
    case stage::ModuleKind::kEmbedding:
      return planner::ModuleKind::kEmbedding;
    case stage::ModuleKind::kDecoderLayer:
      return planner::ModuleKind::kLayer;
    case stage::ModuleKind::kFinalNorm:
      return planner::ModuleKind::kNorm;
    case stage::ModuleKind::kLmHead:
      return planner::ModuleKind::kHead;
  }
  return planner::ModuleKind::kLayer;
}

config::Config config_for(const PlanOptions& o) {
  if (!o.config_file.empty()) return config::load_config(o.config_file, o.overrides);
  if (o.model_dir.empty()) throw std::invalid_argument("give --config FILE or --model DIR");
  std::string text = "[model]\npath = \"\"\n";
  std::vector<std::string> ov = o.overrides;
  ov.insert(ov.begin(), "model.path=\"" + o.model_dir + "\"");
  return config::parse_config(text, "(command line)", ".", ov);
}

}  // namespace

planner::ModelDescriptor build_descriptor(const storage::Checkpoint& ck, at::ScalarType dtype, bool int8,
                                          const std::vector<std::string>& int8_skip) {
  const stage::ModelDescription d = stage::describe(ck);
  const stage::ModelConfig& c = d.config;
  planner::ModelDescriptor m;
  m.model_type = c.model_type;
  m.hidden_size = c.hidden_size;
  m.intermediate_size = c.intermediate_size;
  m.vocab_size = c.vocab_size;
  m.num_heads = c.num_heads;
  m.num_kv_heads = c.num_kv_heads;
  m.head_dim = c.head_dim;
  m.dtype_bytes = static_cast<int>(at::elementSize(dtype));
  for (const auto& spec : d.modules) {
    planner::ModuleInfo mi;
    mi.name = spec.name;
    mi.kind = kind_of(spec.kind);
    for (const auto& t : spec.tensors) {
      const storage::TensorInfo& info = ck.info(t);
      const uint64_t numel = static_cast<uint64_t>(info.numel());
      const stage::Int8Layout layout = int8 && stage::int8_module(spec, int8_skip)
                                           ? stage::int8_layout(t, info.shape.size())
                                           : stage::Int8Layout::kNone;
      mi.tensors.push_back({t, layout != stage::Int8Layout::kNone ? stage::int8_bytes(info.shape, layout)
                               : at::isFloatingType(info.dtype)   ? numel * m.dtype_bytes
                                                                  : info.nbytes()});
      // A lookup costs no FLOPs; every other matrix is one multiply-add per weight.
      if (info.shape.size() >= 2 && mi.kind != planner::ModuleKind::kEmbedding) mi.flops_per_token += 2.0 * numel;
    }
    if (mi.kind == planner::ModuleKind::kLayer) {
      mi.kv_bytes_per_token = 2ull * c.num_kv_heads * c.head_dim * m.dtype_bytes;
    }
    m.modules.push_back(std::move(mi));
  }
  return m;
}

planner::HostMemory probe_host() {
  planner::HostMemory h = planner::probe_host_memory();
#ifdef CASCADE_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess) {
    for (int g = 0; g < n; ++g) {
      size_t free = 0, total = 0;
      if (cudaSetDevice(g) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess) h.gpu_free.push_back(free);
    }
  }
#endif
  return h;
}

PlannedRun plan_run(const config::Config& cfg, const std::string& max_memory) {
  PlannedRun run;
  run.config = cfg;
  run.checkpoint = storage::Checkpoint::open(cfg.model.path);
  run.dtype = stage::resolve_dtype(cfg.model.dtype, *run.checkpoint);
  planner::PlanRequest& req = run.request;
  req.model =
      build_descriptor(*run.checkpoint, run.dtype, cfg.quantization.mode == "int8", cfg.quantization.skip_modules);
  const auto specs =
      max_memory.empty() ? planner::from_config(cfg.placement.max_memory) : planner::parse_max_memory(max_memory);
  req.budgets = planner::resolve_budgets(specs, probe_host());
  req.strategy = cfg.placement.strategy;
  req.mode = cfg.runtime.mode;
  req.max_batch = cfg.runtime.max_batch;
  req.max_seq_len = cfg.runtime.max_seq_len;
  req.offload_compute = cfg.placement.offload_compute;
  req.device_map = cfg.placement.device_map;
  run.plan = planner::make_plan(req);
  return run;
}

void run_plan(const PlanOptions& o, std::ostream& out) {
  PlanOptions opts = o;
  // Explicit flags become overrides on top of the config file.
  auto set = [&](const char* key, const std::string& v) {
    if (!v.empty()) opts.overrides.push_back(std::string(key) + "=\"" + v + "\"");
  };
  set("placement.strategy", o.strategy);
  set("runtime.mode", o.mode);
  set("model.dtype", o.dtype);
  set("placement.offload_compute", o.offload_compute);
  set("quantization.mode", o.quantization);
  if (o.max_batch > 0) opts.overrides.push_back("runtime.max_batch=" + std::to_string(o.max_batch));
  if (o.max_seq_len > 0) opts.overrides.push_back("runtime.max_seq_len=" + std::to_string(o.max_seq_len));
  const config::Config cfg = config_for(opts);

  const PlannedRun run = plan_run(cfg, o.max_memory);
  const planner::PlanRequest& req = run.request;
  const planner::Plan& plan = run.plan;
  const at::ScalarType dtype = run.dtype;
  if (o.json) {
    out << planner::plan_json(req.model, plan) << "\n";
    return;
  }
  out << "model: " << cfg.model.path << " (" << req.model.model_type << ", " << storage::dtype_name(dtype) << ")\n"
      << "strategy " << config::to_string(req.strategy) << ", mode " << config::to_string(req.mode) << ", max_batch "
      << req.max_batch << ", max_seq_len " << req.max_seq_len << ", offload_compute " << req.offload_compute
      << (req.offload_compute == "auto" ? " (" + plan.offload_choice + ")" : "") << "\n"
      << "budgets:";
  for (size_t i = 0; i < req.budgets.size(); ++i) {
    const auto& b = req.budgets[i];
    out << (i ? "," : "") << " " << b.device.str() << " "
        << (b.bytes ? config::format_bytes(*b.bytes) : std::string("unlimited")) << (b.measured ? " (measured)" : "");
  }
  out << "\n\n" << planner::format_plan(req.model, plan);
}

}  // namespace cascade::daemon
