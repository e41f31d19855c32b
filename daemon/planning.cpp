#include "daemon/planning.h"

#include <algorithm>
#include <iomanip>
#include <iostream>
#include <ostream>
#include <sstream>

#include "config/size.h"
#include "daemon/calibrate.h"
#include "daemon/gpu_memory.h"
#include "planner/report.h"
#include "stage/kernels/quant.h"
#include "stage/model.h"
#include "stage/weights/weight_stream.h"
#include "storage/checkpoint.h"

namespace cascade::daemon {
namespace {

planner::ModuleKind kind_of(stage::ModuleKind k) {
  switch (k) {
    case stage::ModuleKind::kEmbedding:
      return planner::ModuleKind::kEmbedding;
    case stage::ModuleKind::kEncoderLayer:
    case stage::ModuleKind::kDecoderLayer:
      return planner::ModuleKind::kLayer;
    case stage::ModuleKind::kExperts:
      return planner::ModuleKind::kExperts;
    case stage::ModuleKind::kEncoderNorm:
    case stage::ModuleKind::kFinalNorm:
      return planner::ModuleKind::kNorm;
    case stage::ModuleKind::kLmHead:
      return planner::ModuleKind::kHead;
  }
  return planner::ModuleKind::kLayer;
}

config::Config config_for(const PlanOptions& o) {
  return config::resolve_config(o.config_file, o.model_dir, o.overrides);
}

}  // namespace

void print_plan(const PlannedRun& run, std::ostream& log) {
  log << "cascade: device map\n" << planner::format_plan(run.request.model, run.plan);
  std::ostringstream predicted;  // a stream of its own: the log's format flags stay as they are
  predicted << std::fixed << std::setprecision(1) << "cascade: predicted decode step "
            << run.plan.predicted_step_s * 1e3 << " ms at max_batch " << run.config.runtime.max_batch
            << " by the cost model (rates: " << run.rates << ")"
            << (run.plan.offload_choice.empty()
                    ? ""
                    : "; offload_compute " + run.plan.offload_compute + ": " + run.plan.offload_choice);
  log << predicted.str() << "\n";
}

planner::ModelDescriptor build_descriptor(const storage::Checkpoint& ck, const stage::ModelDescription& d,
                                          at::ScalarType dtype, const config::QuantizationSection& quant) {
  planner::ModelDescriptor m;
  m.model_type = d.config.model_type;
  m.vocab_size = d.config.vocab_size;
  m.dtype_bytes = static_cast<int>(at::elementSize(dtype));
  m.embedding_movable = !d.config.encoder_decoder();
  const bool int8 = quant.mode == "int8";
  for (const auto& spec : d.modules) {
    planner::ModuleInfo mi;
    mi.name = spec.name;
    mi.kind = kind_of(spec.kind);
    const bool quantized = int8 && stage::int8_module(spec, quant.skip_modules);
    for (const auto& t : spec.tensors) {
      const storage::TensorInfo& info = ck.info(t);
      const stage::Int8Layout layout = quantized ? spec.int8_layout(t) : stage::Int8Layout::kNone;
      const auto share = spec.cost.read_share.find(t);
      mi.tensors.push_back({t,
                            layout != stage::Int8Layout::kNone ? stage::int8_bytes(info.shape, layout)
                            : at::isFloatingType(info.dtype)   ? info.numel() * uint64_t(m.dtype_bytes)
                                                               : info.nbytes(),
                            share == spec.cost.read_share.end() ? 1.0 : share->second});
    }
    mi.flops_per_token = spec.cost.flops_per_token;
    mi.int8 = quantized;
    mi.kv_bytes_per_token = static_cast<uint64_t>(spec.cost.kv_elems_per_token) * m.dtype_bytes;
    m.act_bytes_per_token =
        std::max(m.act_bytes_per_token, static_cast<uint64_t>(spec.cost.act_elems_per_token) * m.dtype_bytes);
    m.score_heads = std::max(m.score_heads, spec.cost.score_heads);
    m.modules.push_back(std::move(mi));
  }
  return m;
}

planner::ModelDescriptor build_descriptor(const storage::Checkpoint& ck, at::ScalarType dtype,
                                          const config::QuantizationSection& quant) {
  return build_descriptor(ck, stage::describe(ck), dtype, quant);
}

planner::HostMemory probe_host() {
  planner::HostMemory h = planner::probe_host_memory();
  h.gpu_free = gpu_free_memory();
  return h;
}

PlannedRun plan_run(const config::Config& cfg, const std::string& max_memory, std::ostream* progress) {
  PlannedRun run;
  run.config = cfg;
  run.checkpoint = storage::Checkpoint::open(cfg.model.path);
  run.description = stage::describe(*run.checkpoint);
  run.dtype = stage::resolve_dtype(cfg.model.dtype, *run.checkpoint, run.description);
  planner::PlanRequest& req = run.request;
  req.model = build_descriptor(*run.checkpoint, run.description, run.dtype, cfg.quantization);
  const auto specs =
      max_memory.empty() ? planner::from_config(cfg.placement.max_memory) : planner::parse_max_memory(max_memory);
  const planner::HostMemory host = probe_host();
  req.budgets = planner::resolve_budgets(specs, host);
  req.strategy = cfg.placement.strategy;
  req.mode = cfg.runtime.mode;
  req.max_batch = cfg.runtime.max_batch;
  req.max_seq_len = cfg.runtime.max_seq_len;
  req.offload_compute = cfg.placement.offload_compute;
  req.streamed_share = cfg.placement.streamed_share;
  req.experts = cfg.placement.experts;
  req.device_map = cfg.placement.device_map;
  req.staging_buffers = stage::WeightStream::staging_buffers();  // how far the stage reads the disk tier ahead
  req.stream_slots = cfg.placement.stream_slots;
  run.rates = plan_run_rates(req, !host.gpu_free.empty(), progress ? *progress : std::cerr);
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
  set("placement.experts", o.experts);
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
      << (plan.offload_choice.empty() ? "" : " (" + plan.offload_choice + ")");
  const bool moe = std::any_of(req.model.modules.begin(), req.model.modules.end(),
                               [](const planner::ModuleInfo& m) { return m.kind == planner::ModuleKind::kExperts; });
  if (moe) out << ", experts " << config::to_string(req.experts);
  out << "\ncost model rates: " << run.rates << "\npredicted decode step: " << std::fixed << std::setprecision(1)
      << plan.predicted_step_s * 1e3 << " ms at max_batch " << req.max_batch << " ("
      << static_cast<double>(req.max_batch) / plan.predicted_step_s << " tok/s)" << std::defaultfloat;
  out << "\nbudgets:";
  for (size_t i = 0; i < req.budgets.size(); ++i) {
    const auto& b = req.budgets[i];
    out << (i ? "," : "") << " " << b.device.str() << " "
        << (b.bytes ? config::format_bytes(*b.bytes) : std::string("unlimited")) << (b.measured ? " (measured)" : "");
  }
  out << "\n\n" << planner::format_plan(req.model, plan);
}

}  // namespace cascade::daemon
