// Gemma 2 (google/gemma-2-2b, -9b, -27b): Gemma's (1 + w) RMSNorm, scaled embeddings,
// GeGLU and tied head, plus
//   - "sandwich" norms: the attention and MLP outputs are normed before their residual
//     adds (post_attention_layernorm, post_feedforward_layernorm), and the MLP's input
//     norm is pre_feedforward_layernorm;
//   - attention scores soft-capped (attn_logit_softcapping), and the final logits too
//     (final_logit_softcapping);
//   - sliding-window attention on the layers layer_types marks "sliding_attention"
//     (every other layer, from layer 0, when it is absent);
//   - q.k scaled by query_pre_attn_scalar^-1/2 instead of head_dim^-1/2.
#include <cmath>
#include <memory>

#include "stage/family.h"
#include "stage/layers/decoder.h"

namespace cascade::stage {
namespace {

// Which layers use the sliding window, from config.json.
std::vector<bool> sliding_layers(const nlohmann::json& j, int64_t layers) {
  std::vector<bool> out(static_cast<size_t>(layers));
  const auto it = j.find("layer_types");
  if (it == j.end() || it->is_null()) {
    for (int64_t i = 0; i < layers; ++i) out[static_cast<size_t>(i)] = i % 2 == 0;
    return out;
  }
  if (!it->is_array() || static_cast<int64_t>(it->size()) != layers) {
    throw ModelConfigError("config.json: 'layer_types' must list one type per layer (" + std::to_string(layers) + ")");
  }
  for (int64_t i = 0; i < layers; ++i) {
    const auto& t = (*it)[static_cast<size_t>(i)];
    if (!t.is_string() || (t != "sliding_attention" && t != "full_attention")) {
      throw ModelConfigError("config.json: layer_types[" + std::to_string(i) +
                             "] must be \"sliding_attention\" or \"full_attention\"");
    }
    out[static_cast<size_t>(i)] = t == "sliding_attention";
  }
  return out;
}

class Gemma2Family : public DecoderFamily {
 public:
  const char* name() const override { return "gemma2"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c = cfg::read_standard(j, name(), {"gelu_pytorch_tanh", /*tie_word_embeddings=*/true});
    c.hidden_act = cfg::get_string(j, "hidden_activation", c.hidden_act);
    parse_activation(c.hidden_act);
    c.qkv_bias = c.o_bias = cfg::get_bool(j, "attention_bias", false);
    c.sliding_window = cfg::get_int(j, "sliding_window", 4096);
    if (c.sliding_window <= 0) throw ModelConfigError("config.json: gemma2 'sliding_window' must be positive");
    if (cfg::get_double(j, "query_pre_attn_scalar", 256) <= 0)
      throw ModelConfigError("config.json: gemma2 'query_pre_attn_scalar' must be positive");
    sliding_layers(j, c.num_layers);  // checked here, used by recipe()
    return c;
  }

 protected:
  DecoderRecipe recipe(const ModelConfig& c) const override {
    const nlohmann::json& j = c.json;
    DecoderRecipe r = DecoderRecipe::standard(c);
    r.norm = NormKind::kRmsOnePlus;
    r.embed_scale = std::sqrt(static_cast<double>(c.hidden_size));
    r.sandwich_norms = true;
    r.attention.scale = 1.0 / std::sqrt(cfg::get_double(j, "query_pre_attn_scalar", 256));
    r.attention.softcap = cfg::get_double(j, "attn_logit_softcapping", 0);
    r.logit_softcap = cfg::get_double(j, "final_logit_softcapping", 0);
    auto sliding = std::make_shared<std::vector<bool>>(sliding_layers(j, c.num_layers));
    const int64_t window = c.sliding_window;
    r.attention.window = 0;
    r.per_layer = [sliding, window](int64_t layer, AttentionSpec* a) {
      a->window = (*sliding)[static_cast<size_t>(layer)] ? window : 0;
    };
    return r;
  }
};

}  // namespace

const Family& gemma2_family() {
  static const Gemma2Family f;
  return f;
}

}  // namespace cascade::stage
