// Bloom (bigscience/bloom-560m … bloom-176b, bloomz): no position embeddings but ALiBi
// (a per-head linear bias on the attention scores, for any head count), a LayerNorm
// right after the token embedding (word_embeddings_layernorm), LayerNorms with bias,
// q/k/v in one projection laid out head by head (query_key_value: [heads, 3,
// head_dim] rows), biases everywhere, a tanh-GELU MLP of 4 * hidden, and an LM head
// tied to the embedding.
//
// Modules follow hf_device_map's names under "transformer." (word_embeddings, h.N,
// ln_f) with the embedding's LayerNorm inside the embedding module, as they run in the
// same step.
#include "stage/family.h"
#include "stage/layers/block.h"
#include "stage/layers/embedding.h"
#include "storage/checkpoint.h"

namespace cascade::stage {
namespace {

AttentionSpec attention_spec(const ModelConfig& c) {
  AttentionSpec a = AttentionSpec::of(c);
  a.position = PositionKind::kAlibi;
  return a;
}

MlpSpec mlp_spec(const ModelConfig& c) {
  return {MlpKind::kPlain, c.hidden_size, c.intermediate_size, Activation::kGeluTanh, true};
}

const AttentionNames kAttention = [] {
  AttentionNames n;
  n.qkv = "query_key_value";
  n.qkv_per_head = true;
  n.o = "dense";
  return n;
}();
const MlpNames kMlp = [] {
  MlpNames n;
  n.fc = "dense_h_to_4h";
  n.proj = "dense_4h_to_h";
  return n;
}();

// `key`, or its other spelling in older Bloom configs.
int64_t get_either(const nlohmann::json& j, const char* key, const char* other) {
  return j.contains(other) && !j.contains(key) ? cfg::get_int(j, other) : cfg::get_int(j, key);
}

class BloomFamily : public Family {
 public:
  const char* name() const override { return "bloom"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c;
    c.model_type = "bloom";
    c.vocab_size = cfg::get_int(j, "vocab_size");
    c.hidden_size = get_either(j, "hidden_size", "n_embed");
    c.num_layers = get_either(j, "n_layer", "num_hidden_layers");
    c.num_heads = c.num_kv_heads = get_either(j, "n_head", "num_attention_heads");
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0)
      throw ModelConfigError("config.json: bloom hidden_size must be a positive multiple of n_head");
    c.head_dim = c.hidden_size / c.num_heads;
    c.intermediate_size = 4 * c.hidden_size;
    c.max_position_embeddings = cfg::get_int(j, "seq_length", 2048);  // ALiBi has no table; informational
    c.norm_eps = cfg::get_double(j, "layer_norm_epsilon", 1e-5);
    c.hidden_act = "gelu_pytorch_tanh";  // bloom_gelu_forward: the tanh approximation
    c.tie_word_embeddings = cfg::get_bool(j, "tie_word_embeddings", true);
    if (cfg::get_bool(j, "apply_residual_connection_post_layernorm", false))
      throw ModelConfigError("config.json: bloom 'apply_residual_connection_post_layernorm': true is not supported");
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.eos_token_ids = cfg::read_eos(j);
    return c;
  }

  std::vector<ModuleSpec> modules(const ModelConfig& c, const storage::Checkpoint& ck) const override {
    const std::string p = transformer_prefix(ck, "bloom", "word_embeddings.weight");
    const std::string e = p + "word_embeddings";
    std::vector<ModuleSpec> m;
    m.push_back(
        {e, ModuleKind::kEmbedding, -1, {e + ".weight", e + "_layernorm.weight", e + "_layernorm.bias"}, {}, {}});
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string b = p + "h." + std::to_string(i);
      ModuleSpec s{b, ModuleKind::kDecoderLayer, i, {b + ".input_layernorm.weight", b + ".input_layernorm.bias"}, {},
                   {}};
      Attention::declare(&s, attention_spec(c), b + ".self_attention.", kAttention);
      s.tensors.push_back(b + ".post_attention_layernorm.weight");
      s.tensors.push_back(b + ".post_attention_layernorm.bias");
      Mlp::declare(&s, mlp_spec(c), b + ".mlp.", kMlp);
      s.cost.act_elems_per_token += DecoderBlock::residual_elems(c.hidden_size);
      m.push_back(std::move(s));
    }
    m.push_back({p + "ln_f", ModuleKind::kFinalNorm, -1, {p + "ln_f.weight", p + "ln_f.bias"}, {}, {}});
    m.push_back(lm_head_spec(c, ck, e + ".weight"));
    return m;
  }

  std::unique_ptr<Module> load(const ModuleSpec& s, const ModelConfig& c, const WeightSource& W) const override {
    const int64_t H = c.hidden_size;
    auto layer_norm = [&](const std::string& name) { return Norm::load(W, name, H, NormKind::kLayer, c.norm_eps); };
    switch (s.kind) {
      case ModuleKind::kEmbedding:
        return std::make_unique<Embedding>(W(s.tensors[0], {c.vocab_size, H}), at::Tensor(), 1.0,
                                           layer_norm(s.name + "_layernorm"));
      case ModuleKind::kDecoderLayer: {
        const std::string b = s.name + ".";
        return std::make_unique<DecoderBlock>(
            DecoderBlock::Parts{layer_norm(b + "input_layernorm"),
                                Attention(attention_spec(c), s.layer, W, b + "self_attention.", kAttention),
                                layer_norm(b + "post_attention_layernorm"),
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

const Family& bloom_family() {
  static const BloomFamily f;
  return f;
}

}  // namespace cascade::stage
