// GPT-2: learned absolute positions, LayerNorm with bias, a fused Conv1D c_attn
// ([hidden, 3*hidden], stored transposed relative to nn.Linear), gelu_new MLP, and an
// LM head tied to the token embedding.
#include <cmath>

#include "stage/family.h"
#include "stage/layers/block.h"
#include "stage/layers/embedding.h"
#include "storage/checkpoint.h"

namespace cascade::stage {
namespace {

// Checkpoints saved from GPT2LMHeadModel prefix names with "transformer."; the
// original hub files saved from GPT2Model do not.
std::string prefix_of(const storage::Checkpoint& ck) { return transformer_prefix(ck, "gpt2", "wte.weight"); }

AttentionSpec attention_spec(const ModelConfig& c, int64_t layer) {
  AttentionSpec a = AttentionSpec::of(c);
  a.position = PositionKind::kNone;  // learned positions are added by the embedding
  a.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  if (cfg::get_bool(c.json, "scale_attn_by_inverse_layer_idx", false)) a.scale /= static_cast<double>(layer + 1);
  return a;
}

MlpSpec mlp_spec(const ModelConfig& c) {
  return {MlpKind::kPlain, c.hidden_size, c.intermediate_size, parse_activation(c.hidden_act), true};
}

const AttentionNames kAttention = [] {
  AttentionNames n;
  n.qkv = "c_attn";
  n.o = "c_proj";
  n.conv1d = true;
  return n;
}();
const MlpNames kMlp = [] {
  MlpNames n;
  n.conv1d = true;
  return n;
}();

class Gpt2Family : public Family {
 public:
  const char* name() const override { return "gpt2"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c;
    c.model_type = "gpt2";
    c.vocab_size = cfg::get_int(j, "vocab_size");
    c.hidden_size = cfg::get_int(j, "n_embd");
    c.num_layers = cfg::get_int(j, "n_layer");
    c.num_heads = c.num_kv_heads = cfg::get_int(j, "n_head");
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0) {
      throw ModelConfigError("config.json: n_embd must be a positive multiple of n_head");
    }
    c.head_dim = c.hidden_size / c.num_heads;
    c.intermediate_size = cfg::get_int(j, "n_inner", 4 * c.hidden_size);
    c.max_position_embeddings = cfg::get_int(j, "n_positions", 1024);
    c.norm_eps = cfg::get_double(j, "layer_norm_epsilon", 1e-5);
    c.hidden_act = cfg::get_string(j, "activation_function", "gelu_new");
    parse_activation(c.hidden_act);
    c.tie_word_embeddings = cfg::get_bool(j, "tie_word_embeddings", true);
    if (!cfg::get_bool(j, "scale_attn_weights", true)) {
      throw ModelConfigError("config.json: gpt2 'scale_attn_weights': false is not supported");
    }
    cfg::get_bool(j, "scale_attn_by_inverse_layer_idx", false);  // checked here, read per layer from c.json
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.eos_token_ids = cfg::read_eos(j);
    return c;
  }

  std::vector<ModuleSpec> modules(const ModelConfig& c, const storage::Checkpoint& ck) const override {
    const std::string p = prefix_of(ck);
    std::vector<ModuleSpec> m;
    // Token and position embeddings run in the same step, so they form one module.
    m.push_back({p + "wte", ModuleKind::kEmbedding, -1, {p + "wte.weight", p + "wpe.weight"}, {}, {}});
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string b = p + "h." + std::to_string(i);
      ModuleSpec s{b, ModuleKind::kDecoderLayer, i, {b + ".ln_1.weight", b + ".ln_1.bias"}, {}, {}};
      Attention::declare(&s, attention_spec(c, i), b + ".attn.", kAttention);
      s.tensors.push_back(b + ".ln_2.weight");
      s.tensors.push_back(b + ".ln_2.bias");
      Mlp::declare(&s, mlp_spec(c), b + ".mlp.", kMlp);
      s.cost.act_elems_per_token += DecoderBlock::residual_elems(c.hidden_size);
      m.push_back(std::move(s));
    }
    m.push_back({p + "ln_f", ModuleKind::kFinalNorm, -1, {p + "ln_f.weight", p + "ln_f.bias"}, {}, {}});
    m.push_back(lm_head_spec(c, ck, p + "wte.weight"));
    return m;
  }

  std::unique_ptr<Module> load(const ModuleSpec& s, const ModelConfig& c, const WeightSource& W) const override {
    const int64_t H = c.hidden_size;
    auto layer_norm = [&](const std::string& name) { return Norm::load(W, name, H, NormKind::kLayer, c.norm_eps); };
    switch (s.kind) {
      case ModuleKind::kEmbedding:
        return std::make_unique<Embedding>(W(s.tensors[0], {c.vocab_size, H}),
                                           W(s.tensors[1], {c.max_position_embeddings, H}));
      case ModuleKind::kDecoderLayer: {
        const std::string b = s.name + ".";
        return std::make_unique<DecoderBlock>(
            DecoderBlock::Parts{layer_norm(b + "ln_1"),
                                Attention(attention_spec(c, s.layer), s.layer, W, b + "attn.", kAttention),
                                layer_norm(b + "ln_2"),
                                Mlp(mlp_spec(c), W, b + "mlp.", kMlp),
                                {},
                                {}});
      }
      case ModuleKind::kFinalNorm:
        return std::make_unique<NormModule>(layer_norm(s.name));
      case ModuleKind::kLmHead:
        return std::make_unique<LmHead>(W(s.tensors[0], {c.vocab_size, H}));
      case ModuleKind::kEncoderLayer:
      case ModuleKind::kEncoderNorm:
      case ModuleKind::kExperts:
        break;  // a dense decoder-only model lists none
    }
    return nullptr;
  }
};

}  // namespace

const Family& gpt2_family() {
  static const Gpt2Family f;
  return f;
}

}  // namespace cascade::stage
