// Qwen3-MoE (Qwen/Qwen3-30B-A3B, -235B-A22B): qwen3's attention (per-head q/k RMSNorm)
// with a mixture of experts in every layer's MLP: the router mlp.gate picks
// num_experts_per_tok of num_experts experts (softmax, top-k, renormalised when
// norm_topk_prob); expert e is mlp.experts.e.{gate,up,down}_proj of
// moe_intermediate_size. Models with dense layers between the sparse ones
// (decoder_sparse_step > 1 or mlp_only_layers) are refused by name.
#include "stage/family.h"
#include "stage/layers/decoder.h"

namespace cascade::stage {
namespace {

// Qwen's checkpoints say num_experts; transformers 5 saves it as num_local_experts.
int64_t num_experts(const nlohmann::json& j) {
  return j.contains("num_local_experts") ? cfg::get_int(j, "num_local_experts") : cfg::get_int(j, "num_experts");
}

class Qwen3MoeFamily : public DecoderFamily {
 public:
  const char* name() const override { return "qwen3_moe"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c = cfg::read_standard(j, name());
    parse_activation(c.hidden_act);
    c.qkv_bias = c.o_bias = cfg::get_bool(j, "attention_bias", false);
    if (cfg::get_bool(j, "use_sliding_window", false)) {
      throw ModelConfigError("config.json: qwen3_moe 'use_sliding_window': true is not supported");
    }
    if (cfg::get_int(j, "decoder_sparse_step", 1) != 1) {
      throw ModelConfigError(
          "config.json: qwen3_moe 'decoder_sparse_step' other than 1 (dense layers between "
          "sparse ones) is not supported");
    }
    if (j.contains("mlp_only_layers") && !j["mlp_only_layers"].is_null() && !j["mlp_only_layers"].empty()) {
      throw ModelConfigError("config.json: qwen3_moe 'mlp_only_layers' (dense layers) is not supported");
    }
    const int64_t experts = num_experts(j), top_k = cfg::get_int(j, "num_experts_per_tok");
    if (experts <= 0 || top_k <= 0 || top_k > experts) {
      throw ModelConfigError("config.json: qwen3_moe needs 0 < num_experts_per_tok <= num_experts, got " +
                             std::to_string(top_k) + " of " + std::to_string(experts));
    }
    if (cfg::get_int(j, "moe_intermediate_size") <= 0)
      throw ModelConfigError("config.json: qwen3_moe 'moe_intermediate_size' must be positive");
    return c;
  }

 protected:
  DecoderRecipe recipe(const ModelConfig& c) const override {
    const nlohmann::json& j = c.json;
    DecoderRecipe r = DecoderRecipe::standard(c);
    r.attention.qk_norm = NormKind::kRms;
    r.attention.qk_norm_eps = c.norm_eps;
    r.mlp.kind = MlpKind::kMoe;
    r.mlp.intermediate = cfg::get_int(j, "moe_intermediate_size");
    r.mlp.experts = num_experts(j);
    r.mlp.top_k = cfg::get_int(j, "num_experts_per_tok");
    r.mlp.normalize_top_k = cfg::get_bool(j, "norm_topk_prob", false);
    return r;
  }
};

}  // namespace

const Family& qwen3_moe_family() {
  static const Qwen3MoeFamily f;
  return f;
}

}  // namespace cascade::stage
