// Qwen3 (Qwen/Qwen3-0.6B … 32B): the standard decoder layout with a per-head RMSNorm on
// q and k over head_dim (q_norm, k_norm; before RoPE), head_dim set apart from
// hidden / heads, no q/k/v biases unless attention_bias says so.
#include "stage/family.h"
#include "stage/layers/decoder.h"

namespace cascade::stage {
namespace {

class Qwen3Family : public DecoderFamily {
 public:
  const char* name() const override { return "qwen3"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c = cfg::read_standard(j, name());
    parse_activation(c.hidden_act);
    c.qkv_bias = c.o_bias = cfg::get_bool(j, "attention_bias", false);
    if (cfg::get_bool(j, "use_sliding_window", false)) {
      throw ModelConfigError("config.json: qwen3 'use_sliding_window': true is not supported");
    }
    return c;
  }

 protected:
  DecoderRecipe recipe(const ModelConfig& c) const override {
    DecoderRecipe r = DecoderRecipe::standard(c);
    r.attention.qk_norm = NormKind::kRms;
    r.attention.qk_norm_eps = c.norm_eps;
    return r;
  }
};

}  // namespace

const Family& qwen3_family() {
  static const Qwen3Family f;
  return f;
}

}  // namespace cascade::stage
