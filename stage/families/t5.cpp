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
// The modules run on the route of stage/layers/seq2seq.h: a request's first prefill
// is its encoder input then decoder_start_token_id; encoder modules work on the
// former rows, decoder blocks store the cross-attention K/V of the encoder rows in the
// slot's first positions and run the decoder rows.
#include <cmath>
#include <optional>
#include <tuple>

#include "stage/family.h"
#include "stage/layers/attention.h"
#include "stage/layers/block.h"
#include "stage/layers/embedding.h"
#include "stage/layers/mlp.h"
#include "stage/layers/relative_bias.h"
#include "stage/layers/seq2seq.h"
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
  // One K/V pair per position of a slot: the decoder's self-attention charges it; the
  // encoder keeps no cache, and cross-attention's K/V sit at the encoder's positions.
  AttentionSpec self = attention_spec(c), cross = attention_spec(c);
  self.charges_kv = decoder;
  cross.charges_kv = false;
  Attention::declare(&s, self, b + std::to_string(sub) + ".SelfAttention.", kAttention);
  RelativeBias::declare(&s, stack + ".block.0.layer.0.SelfAttention.relative_attention_bias");
  if (decoder) {
    ++sub;
    norm();
    Attention::declare(&s, cross, b + std::to_string(sub) + ".EncDecAttention.", kAttention);
  }
  ++sub;
  norm();
  Mlp::declare(&s, mlp_spec(c, t.gated), b + std::to_string(sub) + ".DenseReluDense.", kMlp);
  s.cost.act_elems_per_token += DecoderBlock::residual_elems(c.hidden_size);
  return s;
}

Norm norm(const WeightSource& W, const ModelConfig& c, const std::string& prefix) {
  return Norm::load(W, prefix, c.hidden_size, NormKind::kRms, c.norm_eps);  // T5LayerNorm: no mean, no bias
}

// float16 T5 overflows in its residual stream; transformers clamps it just inside the
// range after each sub-layer, and so does this.
at::Tensor clamp_fp16(const at::Tensor& x) {
  if (x.scalar_type() != at::kHalf) return x;
  const double edge = 65504.0 - 1000.0;
  return at::clamp(x, -edge, edge);
}

// One T5 attention's projections (self or cross), and its heads.
struct T5Projections {
  Linear q, k, v, o;
  int64_t heads = 0, head_dim = 0;

  T5Projections(const ModelConfig& c, const WeightSource& W, const std::string& prefix)
      : heads(c.num_heads), head_dim(c.head_dim) {
    const int64_t inner = heads * head_dim;
    q = Linear::load(W, prefix + "q", inner, c.hidden_size, false);
    k = Linear::load(W, prefix + "k", inner, c.hidden_size, false);
    v = Linear::load(W, prefix + "v", inner, c.hidden_size, false);
    o = Linear::load(W, prefix + "o", c.hidden_size, inner, false);
  }
  // [tokens, hidden] -> [tokens, heads, head_dim]
  at::Tensor split(const at::Tensor& y) const { return y.view({y.size(0), heads, head_dim}); }
  // x + o(a), a [tokens, heads * head_dim].
  at::Tensor out(const at::Tensor& x, const at::Tensor& a) const { return clamp_fp16(o.add_to(x, o.input(a))); }
};

// Rows [row, row + n) of t [tokens, heads, d] as [heads, n, d].
at::Tensor heads_first(const at::Tensor& t, int64_t row, int64_t n) { return t.narrow(0, row, n).transpose(0, 1); }

at::Tensor positions(int64_t from, int64_t to, at::Device device) {
  return at::arange(from, to, at::TensorOptions().dtype(at::kLong).device(device));
}

// encoder.block.N / decoder.block.N. An encoder block runs its stack's rows
// (bidirectional self-attention over the sequence's whole input); a decoder block
// stores the cross-attention K/V of the encoder rows, then runs causal self-attention,
// cross-attention and the feed-forward over the decoder rows.
class T5Block : public Module {
 public:
  T5Block(const ModelConfig& c, const T5Shape& t, bool decoder, int64_t layer, const WeightSource& W)
      : decoder_(decoder), layer_(layer) {
    const std::string stack = decoder ? "decoder" : "encoder";
    const std::string b = stack + ".block." + std::to_string(layer) + ".layer.";
    RelativeBiasSpec bs = t.bias;
    bs.bidirectional = !decoder;
    int64_t sub = 0;
    self_norm_ = norm(W, c, b + "0.layer_norm");
    self_.emplace(c, W, b + "0.SelfAttention.");
    bias_ = RelativeBias::load(bs, W, stack + ".block.0.layer.0.SelfAttention.relative_attention_bias");
    if (decoder) {
      sub = 1;
      cross_norm_ = norm(W, c, b + "1.layer_norm");
      cross_.emplace(c, W, b + "1.EncDecAttention.");
    }
    ++sub;
    ff_norm_ = norm(W, c, b + std::to_string(sub) + ".layer_norm");
    mlp_.emplace(mlp_spec(c, t.gated), W, b + std::to_string(sub) + ".DenseReluDense.", kMlp);
  }

  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override {
    if (ctx.decode.defined() && ctx.decode.context.defined())  // a GPU decode step: no encoder rows
      return decoder_ ? decode_step(x, ctx.decode, *ctx.kv) : x;
    const Seq2SeqRows& r = Seq2SeqRows::of(ctx, x.device());
    if (decoder_) {
      store_cross(x, r, *ctx.kv);
      if (r.dec_tokens == 0) return x;
      at::Tensor h = self_attention(x.index_select(0, r.dec), r, ctx.kv);
      h = cross_attention(h, r, *ctx.kv);
      return with_rows(x, r.dec, feed_forward(h));
    }
    if (r.enc_tokens == 0) return x;
    const at::Tensor h = self_attention(x.index_select(0, r.enc), r, nullptr);
    return with_rows(x, r.enc, feed_forward(h));
  }

 private:
  // Every sequence's decode token at once, with no host work (CUDA graphs capture it):
  // one read of each slot serves self-attention over [context, pos] and cross-attention
  // over [0, context).
  at::Tensor decode_step(const at::Tensor& x, const DecodeIndex& d, KvCache& kv) {
    const T5Projections& p = *self_;
    const Int8Activation in = p.q.input(self_norm_(x));
    kv.store_decode(layer_, d, p.split(p.k(in)), p.split(p.v(in)));
    const auto [keys, vals] = kv.read_decode(layer_, d);                       // [B, heads, span, head_dim]
    const at::Tensor kpos = at::arange(d.span, d.pos.options()).unsqueeze(0);  // [1, span]
    const at::Tensor qpos = d.pos.unsqueeze(1), context = d.context.unsqueeze(1);
    const at::Tensor own = kpos.ge(context).logical_and(kpos.le(qpos));  // [B, span]
    at::Tensor h = p.out(x, biased_decode_attention(p.split(p.q(in)), keys, vals, bias_.of_relative(kpos - qpos), own));
    const T5Projections& c = *cross_;
    h = c.out(h, biased_decode_attention(c.split(c.q(cross_norm_(h))), keys, vals, {}, kpos.lt(context)));
    return feed_forward(h);
  }

  // h: the stack's rows [n, hidden] -> h + attention. The encoder attends within each
  // sequence's input; the decoder stores its K/V in `kv` and attends causally to the
  // sequence's decoder positions, [context, position].
  at::Tensor self_attention(const at::Tensor& h, const Seq2SeqRows& r, KvCache* kv) const {
    const T5Projections& p = *self_;
    const Int8Activation in = p.q.input(self_norm_(h));
    const at::Tensor q = p.split(p.q(in)), k = p.split(p.k(in)), v = p.split(p.v(in));
    at::Tensor a = at::empty({h.size(0), p.heads * p.head_dim}, h.options());
    for (const auto& s : r.seqs) {
      const int64_t row = decoder_ ? s.dec_row : s.enc_row, n = decoder_ ? s.dec_len : s.enc_len;
      if (n == 0) continue;
      at::Tensor keys = heads_first(k, row, n), vals = heads_first(v, row, n), qpos, kpos, mask;
      if (decoder_) {
        kv->store(layer_, s.slot, s.dec_pos, k.narrow(0, row, n), v.narrow(0, row, n));
        std::tie(keys, vals) = kv->read(layer_, s.slot, s.context, s.dec_pos + n);
        qpos = positions(s.dec_pos, s.dec_pos + n, h.device());
        kpos = positions(s.context, s.dec_pos + n, h.device());
        if (n > 1) mask = kpos.unsqueeze(0) <= qpos.unsqueeze(1);
      } else {
        qpos = kpos = positions(0, n, h.device());
      }
      a.narrow(0, row, n).copy_(biased_attention(heads_first(q, row, n), keys, vals, bias_(qpos, kpos), mask));
    }
    return p.out(h, a);
  }

  // Cross-attention K/V of the step's encoder rows, at the slot's positions [0, context).
  void store_cross(const at::Tensor& x, const Seq2SeqRows& r, KvCache& kv) const {
    if (r.enc_tokens == 0) return;
    const T5Projections& p = *cross_;
    const Int8Activation in = p.k.input(x.index_select(0, r.enc));
    const at::Tensor k = p.split(p.k(in)), v = p.split(p.v(in));
    for (const auto& s : r.seqs)
      if (s.enc_len > 0)
        kv.store(layer_, s.slot, 0, k.narrow(0, s.enc_row, s.enc_len), v.narrow(0, s.enc_row, s.enc_len));
  }

  // h: decoder rows -> h + attention over each sequence's encoder output (no bias, no mask).
  at::Tensor cross_attention(const at::Tensor& h, const Seq2SeqRows& r, KvCache& kv) const {
    const T5Projections& p = *cross_;
    const at::Tensor q = p.split(p.q(cross_norm_(h)));
    at::Tensor a = at::empty({h.size(0), p.heads * p.head_dim}, h.options());
    for (const auto& s : r.seqs) {
      if (s.dec_len == 0) continue;
      const auto [keys, vals] = kv.read(layer_, s.slot, 0, s.context);
      a.narrow(0, s.dec_row, s.dec_len)
          .copy_(biased_attention(heads_first(q, s.dec_row, s.dec_len), keys, vals, {}, {}));
    }
    return p.out(h, a);
  }

  at::Tensor feed_forward(const at::Tensor& h) { return clamp_fp16((*mlp_)(ff_norm_(h), h)); }

  bool decoder_;
  int64_t layer_;
  Norm self_norm_, cross_norm_, ff_norm_;
  std::optional<T5Projections> self_, cross_;
  RelativeBias bias_;
  std::optional<Mlp> mlp_;
};

// encoder.final_layer_norm: the encoder's output, which the decoder blocks read.
class T5EncoderNorm : public Module {
 public:
  explicit T5EncoderNorm(Norm n) : n_(std::move(n)) {}
  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override {
    if (ctx.decode.defined() && ctx.decode.context.defined()) return x;  // a GPU decode step
    const Seq2SeqRows& r = Seq2SeqRows::of(ctx, x.device());
    return r.enc_tokens == 0 ? x : with_rows(x, r.enc, n_(x.index_select(0, r.enc)));
  }

 private:
  Norm n_;
};

// "t5", and "mt5": mT5 is T5 v1.1's architecture under a model_type of its own.
class T5Family : public Family {
 public:
  explicit T5Family(const char* name) : name_(name) {}
  const char* name() const override { return name_; }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c;
    c.model_type = name_;
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
      throw ModelConfigError("config.json: " + std::string(name_) +
                             " num_heads, d_kv, num_layers and num_decoder_layers must be positive");
    c.max_position_embeddings = 0;  // relative positions: no table to run past
    c.norm_eps = cfg::get_double(j, "layer_norm_epsilon", 1e-6);
    c.hidden_act = activation_of(cfg::get_string(j, "feed_forward_proj", "relu"));
    parse_activation(c.hidden_act);
    c.tie_word_embeddings = cfg::get_bool(j, "tie_word_embeddings", true);
    if (cfg::get_int(j, "relative_attention_num_buckets", 32) < 4 ||
        cfg::get_int(j, "relative_attention_max_distance", 128) <= 0)
      throw ModelConfigError("config.json: " + std::string(name_) +
                             " relative_attention_num_buckets must be >= 4 and "
                             "relative_attention_max_distance positive");
    // T5 checkpoints start the decoder from the pad token; config.json says so.
    c.decoder_start_token_id = cfg::get_int(j, "decoder_start_token_id", cfg::get_int(j, "pad_token_id", 0));
    if (c.decoder_start_token_id < 0 || c.decoder_start_token_id >= c.vocab_size)
      throw ModelConfigError("config.json: " + std::string(name_) + " decoder_start_token_id " +
                             std::to_string(c.decoder_start_token_id) + " is outside the vocabulary [0, " +
                             std::to_string(c.vocab_size) + ")");
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
    const T5Shape t = shape_of(c);
    const int64_t H = c.hidden_size;
    switch (s.kind) {
      case ModuleKind::kEmbedding:
        return std::make_unique<Embedding>(W("shared.weight", {c.vocab_size, H}));
      case ModuleKind::kEncoderLayer:
      case ModuleKind::kDecoderLayer:
        return std::make_unique<T5Block>(c, t, s.kind == ModuleKind::kDecoderLayer, s.layer, W);
      case ModuleKind::kEncoderNorm:
        return std::make_unique<T5EncoderNorm>(norm(W, c, "encoder.final_layer_norm"));
      case ModuleKind::kFinalNorm:
        return std::make_unique<NormModule>(norm(W, c, "decoder.final_layer_norm"));
      case ModuleKind::kLmHead: {
        // A head tied to the embedding reads d_model^-0.5 times the decoder's output
        // (transformers 5 names the switch scale_decoder_outputs).
        const bool scale = cfg::get_bool(c.json, "scale_decoder_outputs", c.tie_word_embeddings);
        return std::make_unique<LmHead>(W(s.tensors[0], {c.vocab_size, H}), 0.0,
                                        scale ? 1.0 / std::sqrt(static_cast<double>(H)) : 1.0);
      }
      case ModuleKind::kExperts:
        break;  // T5 lists none
    }
    return nullptr;
  }

 private:
  const char* name_;
};

}  // namespace

const Family& t5_family() {
  static const T5Family f("t5");
  return f;
}

const Family& mt5_family() {
  static const T5Family f("mt5");
  return f;
}

}  // namespace cascade::stage
