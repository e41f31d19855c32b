// Gemma (google/gemma-2b, -7b): the standard decoder layout with RMSNorm scaled by
// (1 + w), embeddings multiplied by sqrt(hidden) in the compute dtype, a GeGLU MLP
// (gelu_pytorch_tanh), head_dim set apart from hidden / heads (256), and the LM head
// tied to the embedding.
#include <cmath>

#include "stage/family.h"
#include "stage/layers/decoder.h"

namespace cascade::stage {
namespace {

class GemmaFamily : public DecoderFamily {
 public:
  const char* name() const override { return "gemma"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c = cfg::read_standard(j, name(), {"gelu_pytorch_tanh", /*tie_word_embeddings=*/true});
    // transformers 5 reads hidden_act; 4.x let hidden_activation (when set) override it.
    c.hidden_act = cfg::get_string(j, "hidden_activation", c.hidden_act);
    parse_activation(c.hidden_act);
    c.qkv_bias = c.o_bias = cfg::get_bool(j, "attention_bias", false);
    if (cfg::get_bool(j, "use_bidirectional_attention", false)) {
      throw ModelConfigError("config.json: gemma 'use_bidirectional_attention': true is not supported");
    }
    return c;
  }

 protected:
  DecoderRecipe recipe(const ModelConfig& c) const override {
    DecoderRecipe r = DecoderRecipe::standard(c);
    r.norm = NormKind::kRmsOnePlus;
    r.embed_scale = std::sqrt(static_cast<double>(c.hidden_size));
    return r;
  }
};

}  // namespace

const Family& gemma_family() {
  static const GemmaFamily f;
  return f;
}

}  // namespace cascade::stage
