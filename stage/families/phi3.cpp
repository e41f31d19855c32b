// Phi-3 and Phi-4-mini (microsoft/Phi-3-mini-4k-instruct, -128k, Phi-3.5-mini,
// Phi-4-mini-instruct): the standard decoder layout with
//   - q, k and v in one projection, self_attn.qkv_proj (q rows, then k, then v);
//   - gate and up in one projection, mlp.gate_up_proj (gate rows, then up);
//   - RoPE scaled by LongRoPE ("longrope", early configs "su"): per-frequency short
//     factors, long ones once a sequence outgrows original_max_position_embeddings,
//     cos and sin scaled (stage/layers/rope.h);
//   - partial rotary embeddings (partial_rotary_factor, Phi-4-mini: 0.75);
//   - a sliding window when config.json sets one.
#include "stage/family.h"
#include "stage/layers/decoder.h"

namespace cascade::stage {
namespace {

class Phi3Family : public DecoderFamily {
 public:
  const char* name() const override { return "phi3"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c = cfg::read_standard(j, name());
    parse_activation(c.hidden_act);
    c.sliding_window = cfg::get_int(j, "sliding_window", 0);
    if (c.sliding_window < 0) throw ModelConfigError("config.json: phi3 'sliding_window' must not be negative");
    if (cfg::get_bool(j, "attention_bias", false))
      throw ModelConfigError("config.json: phi3 'attention_bias': true is not supported");
    return c;
  }

 protected:
  DecoderRecipe recipe(const ModelConfig& c) const override {
    DecoderRecipe r = DecoderRecipe::standard(c);
    r.attention_names.qkv = "qkv_proj";
    r.mlp_names.gate_up = "gate_up_proj";
    return r;
  }
};

}  // namespace

const Family& phi3_family() {
  static const Phi3Family f;
  return f;
}

}  // namespace cascade::stage
