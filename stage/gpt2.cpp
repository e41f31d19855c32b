// GPT-2: learned absolute positions, LayerNorm with bias, a fused Conv1D c_attn
// ([hidden, 3*hidden], stored transposed relative to nn.Linear), gelu_new MLP, and an
// LM head tied to the token embedding.
#include <cmath>

#include "stage/family.h"
#include "stage/ops.h"
#include "stage/quant.h"
#include "storage/checkpoint.h"

namespace cascade::stage {
namespace {

// Conv1D as HF applies it: y = b + x @ W with W [in, out]. Under LLM.int8 the loader
// hands W over quantized as its transpose ([out, in] int8 + scales, stage/quant.h).
struct Conv1D {
  at::Tensor w, b;
  at::Tensor scale;  // [out] when w is int8
  double threshold = 0;
  at::Tensor operator()(const at::Tensor& x) const {
    return scale.defined() ? int8_linear(x, w, scale, b, threshold) : at::addmm(b, x, w);
  }
};

Conv1D conv1d(const WeightSource& W, const ModelConfig& c, const std::string& name, int64_t in, int64_t out) {
  Conv1D l;
  l.w = W(name + ".weight", {in, out});
  l.b = W(name + ".bias", {out});
  if (l.w.scalar_type() == at::kChar) {
    l.scale = W(name + ".weight:scale", {});
    l.threshold = c.int8_threshold;
  }
  return l;
}

// Checkpoints saved from GPT2LMHeadModel prefix names with "transformer."; the
// original hub files saved from GPT2Model do not.
std::string prefix_of(const storage::Checkpoint& ck) {
  if (ck.has("transformer.wte.weight")) return "transformer.";
  if (ck.has("wte.weight")) return "";
  throw storage::StorageError(ck.dir() + ": gpt2 checkpoint has neither 'transformer.wte.weight' nor 'wte.weight'");
}

class Embedding : public Module {
 public:
  Embedding(at::Tensor wte, at::Tensor wpe) : wte_(std::move(wte)), wpe_(std::move(wpe)) {}
  at::Tensor forward(const at::Tensor& ids, StepContext& ctx) override {
    for (const SeqSlice& s : ctx.batch.seqs)  // checked on the host: no device sync
      TORCH_CHECK(s.start_pos + s.n_tokens <= wpe_.size(0), "position past n_positions (", wpe_.size(0),
                  ") of this gpt2 model");
    return at::embedding(wte_, ids) + at::embedding(wpe_, ctx.positions);  // [tokens, hidden]
  }

 private:
  at::Tensor wte_, wpe_;
};

class LayerNorm : public Module {
 public:
  LayerNorm(at::Tensor w, at::Tensor b, double eps) : w_(std::move(w)), b_(std::move(b)), eps_(eps) {}
  at::Tensor forward(const at::Tensor& x, StepContext&) override {
    return at::layer_norm(x, {x.size(-1)}, w_, b_, eps_);
  }

 private:
  at::Tensor w_, b_;
  double eps_;
};

class LmHead : public Module {
 public:
  explicit LmHead(at::Tensor w) : w_(std::move(w)) {}
  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override {
    if (x.size(0) == static_cast<int64_t>(ctx.batch.seqs.size())) return apply_linear(x, w_);  // one row each
    return apply_linear(x.index_select(0, ctx.batch.last_rows(x.device())), w_);               // [seqs, vocab]
  }

 private:
  at::Tensor w_;
};

class Block : public Module {
 public:
  Block(const ModelConfig& c, int64_t layer, const std::string& p, const WeightSource& W)
      : cfg_(c), layer_(layer), act_(parse_activation(c.hidden_act)) {
    const int64_t H = c.hidden_size, I = c.intermediate_size;
    ln1_ = LayerNorm(W(p + "ln_1.weight", {H}), W(p + "ln_1.bias", {H}), c.norm_eps);
    ln2_ = LayerNorm(W(p + "ln_2.weight", {H}), W(p + "ln_2.bias", {H}), c.norm_eps);
    attn_ = conv1d(W, c, p + "attn.c_attn", H, 3 * H);
    proj_ = conv1d(W, c, p + "attn.c_proj", H, H);
    fc_ = conv1d(W, c, p + "mlp.c_fc", H, I);
    fc_proj_ = conv1d(W, c, p + "mlp.c_proj", I, H);
    scale_ = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    if (c.scale_attn_by_inverse_layer_idx) scale_ /= static_cast<double>(layer + 1);
  }

  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override {
    const int64_t T = x.size(0), H = cfg_.hidden_size;
    at::Tensor qkv = attn_(ln1_.forward(x, ctx));  // [T, 3H]
    at::Tensor q = qkv.narrow(1, 0, H).reshape({T, cfg_.num_heads, cfg_.head_dim});
    at::Tensor k = qkv.narrow(1, H, H).reshape({T, cfg_.num_heads, cfg_.head_dim});
    at::Tensor v = qkv.narrow(1, 2 * H, H).reshape({T, cfg_.num_heads, cfg_.head_dim});
    at::Tensor y = x + proj_((ctx.decode.defined() ? ctx.kv->attend_decode(layer_, q, k, v, ctx.decode, scale_, 0)
                                                   : ctx.kv->attend(layer_, q, k, v, ctx.batch, scale_, 0)));
    return y + fc_proj_(activate(fc_(ln2_.forward(y, ctx)), act_));
  }

 private:
  ModelConfig cfg_;
  int64_t layer_;
  Activation act_;
  double scale_ = 1.0;
  LayerNorm ln1_{at::Tensor(), at::Tensor(), 0}, ln2_{at::Tensor(), at::Tensor(), 0};
  Conv1D attn_, proj_, fc_, fc_proj_;
};

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
    c.scale_attn_by_inverse_layer_idx = cfg::get_bool(j, "scale_attn_by_inverse_layer_idx", false);
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.eos_token_ids = cfg::read_eos(j);
    return c;
  }

  std::vector<ModuleSpec> modules(const ModelConfig& c, const storage::Checkpoint& ck) const override {
    const std::string p = prefix_of(ck);
    std::vector<ModuleSpec> m;
    // Token and position embeddings run in the same step, so they form one module.
    m.push_back({p + "wte", ModuleKind::kEmbedding, -1, {p + "wte.weight", p + "wpe.weight"}});
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string b = p + "h." + std::to_string(i);
      ModuleSpec s{b, ModuleKind::kDecoderLayer, i, {}};
      for (const char* t : {".ln_1", ".attn.c_attn", ".attn.c_proj", ".ln_2", ".mlp.c_fc", ".mlp.c_proj"}) {
        s.tensors.push_back(b + t + ".weight");
        s.tensors.push_back(b + t + ".bias");
      }
      m.push_back(std::move(s));
    }
    m.push_back({p + "ln_f", ModuleKind::kFinalNorm, -1, {p + "ln_f.weight", p + "ln_f.bias"}});
    if (!c.tie_word_embeddings && !ck.has("lm_head.weight")) {
      throw storage::StorageError(ck.dir() +
                                  ": tensor 'lm_head.weight' is missing and config.json does not tie embeddings");
    }
    m.push_back({"lm_head", ModuleKind::kLmHead, -1, {c.tie_word_embeddings ? p + "wte.weight" : "lm_head.weight"}});
    return m;
  }

  std::unique_ptr<Module> load(const ModuleSpec& s, const ModelConfig& c, const WeightSource& W) const override {
    const int64_t H = c.hidden_size;
    switch (s.kind) {
      case ModuleKind::kEmbedding:
        return std::make_unique<Embedding>(W(s.tensors[0], {c.vocab_size, H}),
                                           W(s.tensors[1], {c.max_position_embeddings, H}));
      case ModuleKind::kDecoderLayer:
        return std::make_unique<Block>(c, s.layer, s.name + ".", W);
      case ModuleKind::kFinalNorm:
        return std::make_unique<LayerNorm>(W(s.tensors[0], {H}), W(s.tensors[1], {H}), c.norm_eps);
      case ModuleKind::kLmHead:
        return std::make_unique<LmHead>(W(s.tensors[0], {c.vocab_size, H}));
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
