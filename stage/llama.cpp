// The llama family and its close relatives: mistral (sliding window) and qwen2
// (q/k/v biases). Pre-norm decoder layers: RMSNorm -> GQA attention with RoPE ->
// residual -> RMSNorm -> gated MLP -> residual.
#include <cmath>

#include "stage/family.h"
#include "stage/ops.h"
#include "stage/quant.h"
#include "stage/rope.h"
#include "storage/checkpoint.h"

namespace cascade::stage {
namespace {

enum class Variant { kLlama, kMistral, kQwen2 };

class Embedding : public Module {
 public:
  explicit Embedding(at::Tensor w) : w_(std::move(w)) {}
  at::Tensor forward(const at::Tensor& ids, StepContext&) override {
    return at::embedding(w_, ids);  // [tokens, hidden]
  }

 private:
  at::Tensor w_;  // [vocab, hidden]
};

class FinalNorm : public Module {
 public:
  FinalNorm(at::Tensor w, double eps) : w_(std::move(w)), eps_(eps) {}
  at::Tensor forward(const at::Tensor& x, StepContext&) override { return rms_norm(x, w_, eps_); }

 private:
  at::Tensor w_;
  double eps_;
};

class LmHead : public Module {
 public:
  explicit LmHead(at::Tensor w) : w_(std::move(w)) {}
  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override {
    // Only each sequence's last token is ever sampled: [seqs, hidden] -> [seqs, vocab].
    if (x.size(0) == static_cast<int64_t>(ctx.batch.seqs.size())) return apply_linear(x, w_);  // one row each
    return apply_linear(x.index_select(0, ctx.batch.last_rows(x.device())), w_);
  }

 private:
  at::Tensor w_;  // [vocab, hidden]
};

struct LinearW {
  at::Tensor w, b;   // [out, in] (float, or int8 under LLM.int8), [out] or undefined
  at::Tensor scale;  // [out] when w is int8
  double threshold = 0;
  // The input as this projection's kind wants it: split for LLM.int8 once, then shared
  // by the projections that read it.
  Int8Activation input(const at::Tensor& x) const {
    return int8_split(x, scale.defined() ? threshold : 0.0);  // weight-only or float: x as is
  }
  at::Tensor operator()(const Int8Activation& a) const {
    return scale.defined() ? int8_linear(a, w, scale, b) : apply_linear(a.x, w, b);
  }
};

class DecoderLayer : public Module {
 public:
  DecoderLayer(const ModelConfig& c, int64_t layer, const WeightSource& W)
      : cfg_(c),
        layer_(layer),
        rope_(c.rope, c.head_dim, c.max_position_embeddings),
        act_(parse_activation(c.hidden_act)) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    const int64_t H = c.hidden_size, q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
    auto lin = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
      LinearW l;
      l.w = W(p + name + ".weight", {out, in});
      if (bias) l.b = W(p + name + ".bias", {out});
      if (l.w.scalar_type() == at::kChar) {
        l.scale = W(p + name + ".weight:scale", {});
        l.threshold = c.int8_threshold;
      }
      return l;
    };
    q_ = lin("self_attn.q_proj", q_out, H, c.qkv_bias);
    k_ = lin("self_attn.k_proj", kv_out, H, c.qkv_bias);
    v_ = lin("self_attn.v_proj", kv_out, H, c.qkv_bias);
    o_ = lin("self_attn.o_proj", H, q_out, c.o_bias);
    gate_ = lin("mlp.gate_proj", c.intermediate_size, H, c.mlp_bias);
    up_ = lin("mlp.up_proj", c.intermediate_size, H, c.mlp_bias);
    down_ = lin("mlp.down_proj", H, c.intermediate_size, c.mlp_bias);
    ln_in_ = W(p + "input_layernorm.weight", {H});
    ln_post_ = W(p + "post_attention_layernorm.weight", {H});
    rope_.place(ln_in_.device());
  }

  // On a GPU, q/k/v become one matmul and gate/up another: at decode each is a GEMV
  // that reads its weight once, and three (two) small ones use HBM worse than one large
  // one, besides the launches. (int8 weights stay apart: the kernel reads rows anyway.)
  void finalize() override {
    if (!q_.w.is_cuda() || q_.scale.defined()) return;
    auto fuse = [](std::initializer_list<LinearW*> parts) {
      LinearW f;
      std::vector<at::Tensor> w, b;
      for (LinearW* p : parts) {
        w.push_back(p->w);
        if (p->b.defined()) b.push_back(p->b);
        *p = LinearW();  // release the separate copy
      }
      f.w = at::cat(w);
      if (!b.empty()) f.b = at::cat(b);
      return f;
    };
    if (q_.b.defined() == k_.b.defined() && k_.b.defined() == v_.b.defined()) qkv_ = fuse({&q_, &k_, &v_});
    if (gate_.b.defined() == up_.b.defined()) gate_up_ = fuse({&gate_, &up_});
  }

  at::Tensor forward(const at::Tensor& x, StepContext& ctx) override {
    const int64_t T = x.size(0);
    const int64_t q_out = cfg_.num_heads * cfg_.head_dim, kv_out = cfg_.num_kv_heads * cfg_.head_dim;
    const Int8Activation h = q_.input(rms_norm(x, ln_in_, cfg_.norm_eps));
    at::Tensor q, k, v;
    if (qkv_.w.defined()) {
      const at::Tensor qkv = qkv_(h);  // [T, q_out + 2 * kv_out]
      q = qkv.narrow(1, 0, q_out);
      k = qkv.narrow(1, q_out, kv_out);
      v = qkv.narrow(1, q_out + kv_out, kv_out);
    } else {
      q = q_(h);
      k = k_(h);
      v = v_(h);
    }
    q = q.view({T, cfg_.num_heads, cfg_.head_dim});
    k = k.view({T, cfg_.num_kv_heads, cfg_.head_dim});
    v = v.view({T, cfg_.num_kv_heads, cfg_.head_dim});
    if (!ctx.rope_cos.defined()) {
      std::tie(ctx.rope_cos, ctx.rope_sin) = rope_.cos_sin(ctx.batch, ctx.positions);
      ctx.rope_cos = ctx.rope_cos.to(x.scalar_type());  // cast once per step, as HF casts per layer
      ctx.rope_sin = ctx.rope_sin.to(x.scalar_type());
    }
    q = apply_rope(q, ctx.rope_cos, ctx.rope_sin);
    k = apply_rope(k, ctx.rope_cos, ctx.rope_sin);
    const double scale = 1.0 / std::sqrt(static_cast<double>(cfg_.head_dim));
    at::Tensor a = ctx.decode.defined()  // [T, heads*dim]
                       ? ctx.kv->attend_decode(layer_, q, k, v, ctx.decode, scale, cfg_.sliding_window)
                       : ctx.kv->attend(layer_, q, k, v, ctx.batch, scale, cfg_.sliding_window);
    at::Tensor y = x + o_(o_.input(a));
    const Int8Activation m = down_.input(rms_norm(y, ln_post_, cfg_.norm_eps));
    at::Tensor gated;  // [T, intermediate]
    if (gate_up_.w.defined()) {
      const at::Tensor gu = gate_up_(m);  // [T, 2 * intermediate]
      gated = activate(gu.narrow(1, 0, cfg_.intermediate_size), act_) *
              gu.narrow(1, cfg_.intermediate_size, cfg_.intermediate_size);
    } else {
      gated = activate(gate_(m), act_) * up_(m);
    }
    return y + down_(down_.input(gated));
  }

 private:
  ModelConfig cfg_;
  int64_t layer_;
  Rope rope_;
  Activation act_;
  LinearW q_, k_, v_, o_, gate_, up_, down_;
  LinearW qkv_, gate_up_;  // set by finalize(), which empties the parts
  at::Tensor ln_in_, ln_post_;
};

class LlamaFamily : public Family {
 public:
  explicit LlamaFamily(Variant v) : v_(v) {}

  const char* name() const override {
    return v_ == Variant::kLlama ? "llama" : v_ == Variant::kMistral ? "mistral" : "qwen2";
  }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c;
    c.model_type = name();
    c.vocab_size = cfg::get_int(j, "vocab_size");
    c.hidden_size = cfg::get_int(j, "hidden_size");
    c.intermediate_size = cfg::get_int(j, "intermediate_size");
    c.num_layers = cfg::get_int(j, "num_hidden_layers");
    c.num_heads = cfg::get_int(j, "num_attention_heads");
    c.num_kv_heads = cfg::get_int(j, "num_key_value_heads", c.num_heads);
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0) {
      throw ModelConfigError("config.json: hidden_size must be a positive multiple of num_attention_heads");
    }
    c.head_dim = cfg::get_int(j, "head_dim", c.hidden_size / c.num_heads);
    if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
      throw ModelConfigError("config.json: num_attention_heads must be a multiple of num_key_value_heads");
    }
    c.max_position_embeddings = cfg::get_int(j, "max_position_embeddings", 2048);
    c.norm_eps = cfg::get_double(j, "rms_norm_eps", 1e-6);
    c.hidden_act = cfg::get_string(j, "hidden_act", "silu");
    parse_activation(c.hidden_act);
    c.tie_word_embeddings = cfg::get_bool(j, "tie_word_embeddings", false);
    c.mlp_bias = cfg::get_bool(j, "mlp_bias", false);
    c.rope = cfg::read_rope(j);
    c.eos_token_ids = cfg::read_eos(j);
    switch (v_) {
      case Variant::kLlama:
        c.qkv_bias = c.o_bias = cfg::get_bool(j, "attention_bias", false);
        break;
      case Variant::kMistral:
        c.sliding_window = cfg::get_int(j, "sliding_window", 0);
        break;
      case Variant::kQwen2:
        c.qkv_bias = true;
        if (cfg::get_bool(j, "use_sliding_window", false)) {
          throw ModelConfigError("config.json: qwen2 'use_sliding_window': true is not supported");
        }
        break;
    }
    return c;
  }

  std::vector<ModuleSpec> modules(const ModelConfig& c, const storage::Checkpoint& ck) const override {
    std::vector<ModuleSpec> m;
    m.push_back({"model.embed_tokens", ModuleKind::kEmbedding, -1, {"model.embed_tokens.weight"}});
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i);
      ModuleSpec s{p, ModuleKind::kDecoderLayer, i, {}};
      for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
        s.tensors.push_back(p + ".self_attn." + proj + ".weight");
        const bool bias = std::string(proj) == "o_proj" ? c.o_bias : c.qkv_bias;
        if (bias) s.tensors.push_back(p + ".self_attn." + proj + ".bias");
      }
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
        s.tensors.push_back(p + ".mlp." + proj + ".weight");
        if (c.mlp_bias) s.tensors.push_back(p + ".mlp." + proj + ".bias");
      }
      s.tensors.push_back(p + ".input_layernorm.weight");
      s.tensors.push_back(p + ".post_attention_layernorm.weight");
      m.push_back(std::move(s));
    }
    m.push_back({"model.norm", ModuleKind::kFinalNorm, -1, {"model.norm.weight"}});
    if (!c.tie_word_embeddings && !ck.has("lm_head.weight")) {
      throw storage::StorageError(ck.dir() +
                                  ": tensor 'lm_head.weight' is missing and config.json does not tie embeddings");
    }
    m.push_back(
        {"lm_head", ModuleKind::kLmHead, -1, {c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"}});
    return m;
  }

  std::unique_ptr<Module> load(const ModuleSpec& s, const ModelConfig& c, const WeightSource& W) const override {
    switch (s.kind) {
      case ModuleKind::kEmbedding:
        return std::make_unique<Embedding>(W(s.tensors[0], {c.vocab_size, c.hidden_size}));
      case ModuleKind::kDecoderLayer:
        return std::make_unique<DecoderLayer>(c, s.layer, W);
      case ModuleKind::kFinalNorm:
        return std::make_unique<FinalNorm>(W(s.tensors[0], {c.hidden_size}), c.norm_eps);
      case ModuleKind::kLmHead:
        return std::make_unique<LmHead>(W(s.tensors[0], {c.vocab_size, c.hidden_size}));
    }
    return nullptr;
  }

 private:
  Variant v_;
};

}  // namespace

const Family& llama_family() {
  static const LlamaFamily f(Variant::kLlama);
  return f;
}
const Family& mistral_family() {
  static const LlamaFamily f(Variant::kMistral);
  return f;
}
const Family& qwen2_family() {
  static const LlamaFamily f(Variant::kQwen2);
  return f;
}

}  // namespace cascade::stage
