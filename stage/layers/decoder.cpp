#include "stage/layers/decoder.h"

#include "stage/layers/block.h"
#include "stage/layers/embedding.h"
#include "storage/checkpoint.h"

namespace cascade::stage {
namespace {

std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

// The block's norms, by role, in the order they are read.
struct NormNames {
  std::string input = "input_layernorm", pre_mlp = "post_attention_layernorm", post_attn, post_mlp;
};
NormNames norm_names(const DecoderRecipe& r) {
  if (!r.sandwich_norms) return {};
  return {"input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm", "post_feedforward_layernorm"};
}

}  // namespace

DecoderRecipe DecoderRecipe::standard(const ModelConfig& c) {
  DecoderRecipe r;
  r.attention = AttentionSpec::of(c);
  r.mlp = {MlpKind::kGated, c.hidden_size, c.intermediate_size, parse_activation(c.hidden_act), c.mlp_bias};
  return r;
}

AttentionSpec DecoderRecipe::attention_of(int64_t layer) const {
  AttentionSpec a = attention;
  if (per_layer) per_layer(layer, &a);
  return a;
}

std::vector<ModuleSpec> decoder_modules(const DecoderRecipe& r, const ModelConfig& c, const storage::Checkpoint& ck) {
  const int64_t H = c.hidden_size;
  const NormKind norm = r.norm;
  auto norm_tensors = [&](ModuleSpec* s, const std::string& name) {
    s->tensors.push_back(name + ".weight");
    if (norm == NormKind::kLayer) s->tensors.push_back(name + ".bias");
  };
  std::vector<ModuleSpec> m;
  m.push_back({"model.embed_tokens", ModuleKind::kEmbedding, -1, {"model.embed_tokens.weight"}, {}, {}});
  const NormNames n = norm_names(r);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = layer_prefix(i);
    ModuleSpec s{p.substr(0, p.size() - 1), ModuleKind::kDecoderLayer, i, {}, {}, {}};
    Attention::declare(&s, r.attention_of(i), p + "self_attn.", r.attention_names);
    for (const std::string& name : {n.input, n.post_attn})
      if (!name.empty()) norm_tensors(&s, p + name);
    s.cost.act_elems_per_token += DecoderBlock::residual_elems(H);
    // A mixture of experts is a module of its own after its layer's attention.
    ModuleSpec experts{p + r.mlp_prefix, ModuleKind::kExperts, i, {}, {}, {}};
    ModuleSpec* mlp = r.mlp.kind == MlpKind::kMoe ? &experts : &s;
    Mlp::declare(mlp, r.mlp, p + r.mlp_prefix + ".", r.mlp_names);
    for (const std::string& name : {n.pre_mlp, n.post_mlp})
      if (!name.empty()) norm_tensors(mlp, p + name);
    m.push_back(std::move(s));
    if (mlp == &experts) {
      experts.cost.act_elems_per_token += DecoderBlock::residual_elems(H);
      m.push_back(std::move(experts));
    }
  }
  ModuleSpec final_norm{"model.norm", ModuleKind::kFinalNorm, -1, {}, {}, {}};
  norm_tensors(&final_norm, "model.norm");
  m.push_back(std::move(final_norm));
  m.push_back(lm_head_spec(c, ck, "model.embed_tokens.weight"));
  return m;
}

std::unique_ptr<Module> decoder_load(const DecoderRecipe& r, const ModuleSpec& s, const ModelConfig& c,
                                     const WeightSource& W) {
  const int64_t H = c.hidden_size;
  auto norm = [&](const std::string& name) { return Norm::load(W, name, H, r.norm, c.norm_eps); };
  switch (s.kind) {
    case ModuleKind::kEmbedding:
      return std::make_unique<Embedding>(W(s.tensors[0], {c.vocab_size, H}), at::Tensor(), r.embed_scale);
    case ModuleKind::kDecoderLayer:
    case ModuleKind::kExperts: {
      const std::string p = layer_prefix(s.layer);
      const NormNames n = norm_names(r);
      const bool moe = r.mlp.kind == MlpKind::kMoe;
      const bool attention = s.kind == ModuleKind::kDecoderLayer, mlp = !moe || s.kind == ModuleKind::kExperts;
      // Built in the order the parts read their weights: the block's input norm first.
      DecoderBlock::Parts parts;
      if (attention) {
        parts.input_norm = norm(p + n.input);
        parts.attention.emplace(r.attention_of(s.layer), s.layer, W, p + "self_attn.", r.attention_names);
        if (r.sandwich_norms) parts.post_attn = norm(p + n.post_attn);
      }
      if (mlp) {
        parts.pre_mlp_norm = norm(p + n.pre_mlp);
        parts.mlp.emplace(r.mlp, W, p + r.mlp_prefix + ".", r.mlp_names);
        if (r.sandwich_norms) parts.post_mlp = norm(p + n.post_mlp);
      }
      return std::make_unique<DecoderBlock>(std::move(parts));
    }
    case ModuleKind::kFinalNorm:
      return std::make_unique<NormModule>(norm("model.norm"));
    case ModuleKind::kLmHead:
      return std::make_unique<LmHead>(W(s.tensors[0], {c.vocab_size, H}), r.logit_softcap);
    case ModuleKind::kEncoderLayer:
    case ModuleKind::kEncoderNorm:
      break;  // a decoder-only model lists none
  }
  return nullptr;
}

}  // namespace cascade::stage
