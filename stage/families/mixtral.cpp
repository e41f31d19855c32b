// Mixtral (mistralai/Mixtral-8x7B, 8x22B): the mistral decoder with a sparse
// mixture-of-experts block in place of the MLP. Per token the router
// (block_sparse_moe.gate) picks num_experts_per_tok of num_local_experts experts by
// softmax probability, renormalised over those picked; expert e is a gated SiLU MLP
// stored as block_sparse_moe.experts.e.w1 (gate), w3 (up), w2 (down).
#include "stage/family.h"
#include "stage/layers/decoder.h"

namespace cascade::stage {
namespace {

class MixtralFamily : public DecoderFamily {
 public:
  const char* name() const override { return "mixtral"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c = cfg::read_standard(j, name());
    parse_activation(c.hidden_act);
    c.sliding_window = cfg::get_int(j, "sliding_window", 0);
    const int64_t experts = cfg::get_int(j, "num_local_experts"), top_k = cfg::get_int(j, "num_experts_per_tok");
    if (experts <= 0 || top_k <= 0 || top_k > experts) {
      throw ModelConfigError("config.json: mixtral needs 0 < num_experts_per_tok <= num_local_experts, got " +
                             std::to_string(top_k) + " of " + std::to_string(experts));
    }
    return c;
  }

 protected:
  DecoderRecipe recipe(const ModelConfig& c) const override {
    DecoderRecipe r = DecoderRecipe::standard(c);
    r.mlp.kind = MlpKind::kMoe;
    r.mlp.experts = cfg::get_int(c.json, "num_local_experts");
    r.mlp.top_k = cfg::get_int(c.json, "num_experts_per_tok");
    r.mlp.normalize_top_k = true;
    r.mlp_prefix = "block_sparse_moe";
    r.mlp_names.gate = "w1";
    r.mlp_names.up = "w3";
    r.mlp_names.down = "w2";
    return r;
  }
};

}  // namespace

const Family& mixtral_family() {
  static const MixtralFamily f;
  return f;
}

}  // namespace cascade::stage
