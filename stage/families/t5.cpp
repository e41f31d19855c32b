// T5 (t5-small … t5-11b), T5 v1.1 and what is trained from it (T0pp, Flan-T5), mT5:
// an encoder stack and a decoder stack over one shared embedding. RMS norms without
// mean or bias; attention without 1/sqrt(d) scaling and with a learned relative
// position bias (stage/layers/relative_bias.h) that each stack's first block holds
// and every block of the stack uses; decoder blocks add cross-attention over the
// encoder's output; a ReLU (T5) or gated-GELU (v1.1) feed-forward; a head tied to the
// embedding scales its input by d_model^-0.5.
//
//   shared                    Embedding, for encoder inputs and decoder tokens alike
//   encoder.block.N           kEncoderLayer: layer.0 self-attention, layer.1 feed-forward
//   encoder.final_layer_norm  kEncoderNorm: its output is what cross-attention reads
//   decoder.block.N           kDecoderLayer: layer.0 causal self-attention, layer.1
//                             cross-attention (EncDecAttention), layer.2 feed-forward
//   decoder.final_layer_norm  kFinalNorm
//   lm_head                   LmHead, or tied to shared
//
// So far the family describes the model (config, modules, tensors, costs), so it is
// planned like any other; building its modules to run is not implemented yet and
// load() says so.
#include "stage/family.h"
#include "stage/layers/attention.h"
#include "stage/layers/block.h"
#include "stage/layers/mlp.h"
#include "stage/layers/relative_bias.h"
#include "storage/checkpoint.h"

namespace cascade::stage {
namespace {

struct T5Shape {
  int64_t encoder_layers = 0, decoder_layers = 0;
  bool gated = false;  // feed_forward_proj "gated-…"
  RelativeBiasSpec bias;
};

T5Shape shape_of(const ModelConfig& c) {
  T5Shape s;
  s.encoder_layers = cfg::get_int(c.json, "num_layers");
  s.decoder_layers = c.num_layers;
  s.gated = cfg::get_string(c.json, "feed_forward_proj", "relu").rfind("gated-", 0) == 0;
  s.bias.heads = c.num_heads;
  s.bias.num_buckets = cfg::get_int(c.json, "relative_attention_num_buckets", 32);
  s.bias.max_distance = cfg::get_int(c.json, "relative_attention_max_distance", 128);
  return s;
}

// feed_forward_proj as transformers reads it: "ACT" or "gated-ACT", where a gated
// "gelu" means gelu_new. Returns the activation's config name.
std::string activation_of(const std::string& proj) {
  const bool gated = proj.rfind("gated-", 0) == 0;
  const std::string act = gated ? proj.substr(6) : proj;
  if (act.empty() || act.find('-') != std::string::npos) {
    throw ModelConfigError("config.json: feed_forward_proj '" + proj +
                           "' is not ACT or gated-ACT (e.g. 'relu', 'gated-gelu')");
  }
  return gated && act == "gelu" ? "gelu_new" : act;
}

AttentionSpec attention_spec(const ModelConfig& c) {
  AttentionSpec a = AttentionSpec::of(c);
  a.scale = 1.0;  // T5 folds 1/sqrt(d) into its initialisation
  a.position = PositionKind::kNone;
  return a;
}

MlpSpec mlp_spec(const ModelConfig& c, bool gated) {
  return {gated ? MlpKind::kGated : MlpKind::kPlain, c.hidden_size, c.intermediate_size, parse_activation(c.hidden_act),
          false};
}

const AttentionNames kAttention = [] {
  AttentionNames n;
  n.q = "q";
  n.k = "k";
  n.v = "v";
  n.o = "o";
  return n;
}();
const MlpNames kMlp = [] {
  MlpNames n;
  n.gate = "wi_0";
  n.up = "wi_1";
  n.down = "wo";
  n.fc = "wi";
  n.proj = "wo";
  return n;
}();

// One block of either stack. Each lists its stack's relative-bias table (block 0's),
// which a stage holding a later block needs as much as block 0 does.
ModuleSpec block_spec(const ModelConfig& c, const T5Shape& t, bool decoder, int64_t i) {
  const std::string stack = decoder ? "decoder" : "encoder";
  const std::string b = stack + ".block." + std::to_string(i) + ".layer.";
  ModuleSpec s{stack + ".block." + std::to_string(i),
               decoder ? ModuleKind::kDecoderLayer : ModuleKind::kEncoderLayer,
               i,
               {},
               {},
               {}};
  int64_t sub = 0;
  auto norm = [&] { s.tensors.push_back(b + std::to_string(sub) + ".layer_norm.weight"); };
  norm();
  Attention::declare(&s, attention_spec(c), b + std::to_string(sub) + ".SelfAttention.", kAttention);
  RelativeBias::declare(&s, stack + ".block.0.layer.0.SelfAttention.relative_attention_bias");
  if (decoder) {
    ++sub;
    norm();
    // Cross-attention caches K and V for each encoder token, which a request's input
    // bounds as max_seq_len bounds its decoder tokens: declare() charges them per token.
    Attention::declare(&s, attention_spec(c), b + std::to_string(sub) + ".EncDecAttention.", kAttention);
  } else {
    s.cost.kv_elems_per_token = 0;  // the encoder keeps no cache: it runs once per request
  }
  ++sub;
  norm();
  Mlp::declare(&s, mlp_spec(c, t.gated), b + std::to_string(sub) + ".DenseReluDense.", kMlp);
  s.cost.act_elems_per_token += DecoderBlock::residual_elems(c.hidden_size);
  return s;
}

class T5Family : public Family {
 public:
  const char* name() const override { return "t5"; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c;
    c.model_type = "t5";
    c.json = j;
    c.vocab_size = cfg::get_int(j, "vocab_size");
    c.hidden_size = cfg::get_int(j, "d_model");
    c.intermediate_size = cfg::get_int(j, "d_ff");
    c.num_heads = c.num_kv_heads = cfg::get_int(j, "num_heads");
    c.head_dim = cfg::get_int(j, "d_kv");
    const int64_t encoder_layers = cfg::get_int(j, "num_layers");
    // num_layers is the decoder stack's: the layers that keep a KV cache.
    c.num_layers = cfg::get_int(j, "num_decoder_layers", encoder_layers);
    if (c.num_heads <= 0 || c.head_dim <= 0 || encoder_layers <= 0 || c.num_layers <= 0)
      throw ModelConfigError("config.json: t5 num_heads, d_kv, num_layers and num_decoder_layers must be positive");
    c.max_position_embeddings = 0;  // relative positions: no table to run past
    c.norm_eps = cfg::get_double(j, "layer_norm_epsilon", 1e-6);
    c.hidden_act = activation_of(cfg::get_string(j, "feed_forward_proj", "relu"));
    parse_activation(c.hidden_act);
    c.tie_word_embeddings = cfg::get_bool(j, "tie_word_embeddings", true);
    if (cfg::get_int(j, "relative_attention_num_buckets", 32) < 4 ||
        cfg::get_int(j, "relative_attention_max_distance", 128) <= 0)
      throw ModelConfigError(
          "config.json: t5 relative_attention_num_buckets must be >= 4 and "
          "relative_attention_max_distance positive");
    cfg::get_int(j, "decoder_start_token_id", 0);  // checked here, read by the drivers
    cfg::get_bool(j, "scale_decoder_outputs", c.tie_word_embeddings);
    c.eos_token_ids = cfg::read_eos(j);
    return c;
  }

  std::vector<ModuleSpec> modules(const ModelConfig& c, const storage::Checkpoint& ck) const override {
    const T5Shape t = shape_of(c);
    std::vector<ModuleSpec> m;
    m.push_back({"shared", ModuleKind::kEmbedding, -1, {"shared.weight"}, {}, {}});
    for (int64_t i = 0; i < t.encoder_layers; ++i) m.push_back(block_spec(c, t, false, i));
    m.push_back(
        {"encoder.final_layer_norm", ModuleKind::kEncoderNorm, -1, {"encoder.final_layer_norm.weight"}, {}, {}});
    for (int64_t i = 0; i < t.decoder_layers; ++i) m.push_back(block_spec(c, t, true, i));
    m.push_back({"decoder.final_layer_norm", ModuleKind::kFinalNorm, -1, {"decoder.final_layer_norm.weight"}, {}, {}});
    m.push_back(lm_head_spec(c, ck, "shared.weight"));
    return m;
  }

  std::unique_ptr<Module> load(const ModuleSpec& s, const ModelConfig& c, const WeightSource& W) const override {
    throw ModelConfigError(
        "t5: Cascade plans this encoder-decoder model but cannot run it yet (the encoder pass "
        "and cross-attention caches are not implemented); module '" +
        s.name + "'");
  }
};

}  // namespace

const Family& t5_family() {
  static const T5Family f;
  return f;
}

}  // namespace cascade::stage
