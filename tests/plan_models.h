// Model descriptors and plan requests the planner's tests build: a llama-like model of
// equal layers, a Mixtral-like one with expert blocks, and a request with budgets.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "planner/plan.h"

namespace cascade::planner::test_models {

using config::DeviceName;
using config::parse_device;
constexpr uint64_t MiB = 1ull << 20;

// A llama-like model: embedding, `layers` equal decoder layers, norm, head.
inline ModelDescriptor model(int layers, uint64_t layer_bytes, uint64_t embed_bytes, bool tied = false,
                             uint64_t kv_per_token = 0) {
  ModelDescriptor m;
  m.model_type = "llama";
  m.vocab_size = 256;
  m.dtype_bytes = 2;
  // A llama layer of hidden 64, intermediate 128, 4 heads of 16 (K and V too), as its
  // family declares it: residuals 4 * 64 + MLP 3 * 128 + q/k/v (4 + 2 * 4) * 16.
  m.act_bytes_per_token = 2 * (4 * 64 + 3 * 128 + 12 * 16);
  m.score_heads = 4;
  m.modules.push_back(
      {"model.embed_tokens", ModuleKind::kEmbedding, {{"model.embed_tokens.weight", embed_bytes}}, 0, 0});
  for (int i = 0; i < layers; ++i) {
    const std::string n = "model.layers." + std::to_string(i);
    m.modules.push_back({n, ModuleKind::kLayer, {{n + ".weight", layer_bytes}}, double(layer_bytes), kv_per_token});
  }
  m.modules.push_back({"model.norm", ModuleKind::kNorm, {{"model.norm.weight", 128}}, 0, 0});
  m.modules.push_back({"lm_head",
                       ModuleKind::kHead,
                       {{tied ? "model.embed_tokens.weight" : "lm_head.weight", embed_bytes}},
                       double(embed_bytes),
                       0});
  return m;
}

inline PlanRequest request(ModelDescriptor m,
                           const std::vector<std::pair<std::string, std::optional<uint64_t>>>& budgets) {
  PlanRequest r;
  r.model = std::move(m);
  for (const auto& [d, b] : budgets) r.budgets.push_back({parse_device(d), b});
  r.max_batch = 1;
  r.max_seq_len = 16;
  return r;
}

// A Mixtral-like model: per layer an attention half of `attn_bytes` and an expert block
// of 8 experts of `expert_bytes` each, top 2 (so a token reads a quarter of them).
inline ModelDescriptor moe_model(int layers, uint64_t attn_bytes, uint64_t expert_bytes) {
  ModelDescriptor m = model(layers, attn_bytes, 10 * MiB);
  for (int i = layers; i >= 1; --i) {
    const std::string n = "model.layers." + std::to_string(i - 1) + ".block_sparse_moe";
    ModuleInfo e{n, ModuleKind::kExperts, {{n + ".gate.weight", 1 * MiB}}, 0, 0};
    for (int x = 0; x < 8; ++x) e.tensors.push_back({n + ".experts." + std::to_string(x), expert_bytes, 0.25});
    e.flops_per_token = 2.0 * static_cast<double>(expert_bytes);
    m.modules.insert(m.modules.begin() + 1 + i, e);
  }
  return m;
}

}  // namespace cascade::planner::test_models
