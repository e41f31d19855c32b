// The standard Hugging Face decoder layout, parameterised: what llama, mistral, qwen2,
// gemma and most later decoder-only families share.
//
//   model.embed_tokens       Embedding (optionally scaled)
//   model.layers.N           DecoderBlock: input_layernorm -> self_attn -> residual ->
//                            post_attention_layernorm -> mlp -> residual (names
//                            configurable; optional post-branch norms)
//   model.layers.N.<mlp>     a mixture of experts only: the layer's feed-forward half
//                            (post_attention_layernorm -> router -> experts -> residual),
//                            its own module (kExperts) so it can be placed apart
//   model.norm               final norm
//   lm_head                  LmHead, or tied to model.embed_tokens
//
// A family with this layout derives from DecoderFamily and says only how to read its
// config.json and how its recipe differs from the standard one; modules() and load()
// come from the recipe, so the tensors, the costs and the layer graph come from one
// description.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "stage/family.h"
#include "stage/layers/attention.h"
#include "stage/layers/mlp.h"
#include "stage/layers/norm.h"

namespace cascade::stage {

struct DecoderRecipe {
  AttentionSpec attention;  // for every layer, unless per_layer changes it
  MlpSpec mlp;
  NormKind norm = NormKind::kRms;
  double embed_scale = 1.0;  // the embedding is multiplied by it (in the compute dtype)
  double logit_softcap = 0;  // final-logit soft-capping; 0 = off
  // Norms on the attention and MLP branch outputs (Gemma 2's "sandwich"), named
  // post_attention_layernorm / post_feedforward_layernorm; the MLP's input norm is then
  // pre_feedforward_layernorm.
  bool sandwich_norms = false;
  std::function<void(int64_t layer, AttentionSpec* a)> per_layer;  // e.g. alternating windows
  AttentionNames attention_names;
  std::string mlp_prefix = "mlp";  // under model.layers.N (Mixtral: block_sparse_moe)
  MlpNames mlp_names;

  AttentionSpec attention_of(int64_t layer) const;
  // The llama recipe for `c`: AttentionSpec::of(c), a gated MLP with c's activation.
  static DecoderRecipe standard(const ModelConfig& c);
};

std::vector<ModuleSpec> decoder_modules(const DecoderRecipe& r, const ModelConfig& c, const storage::Checkpoint& ck);
std::unique_ptr<Module> decoder_load(const DecoderRecipe& r, const ModuleSpec& s, const ModelConfig& c,
                                     const WeightSource& W);

// A Family whose modules follow the standard layout; subclasses give parse_config()
// and, when they differ from DecoderRecipe::standard, recipe().
class DecoderFamily : public Family {
 public:
  std::vector<ModuleSpec> modules(const ModelConfig& c, const storage::Checkpoint& ck) const override {
    return decoder_modules(recipe(c), c, ck);
  }
  std::unique_ptr<Module> load(const ModuleSpec& s, const ModelConfig& c, const WeightSource& W) const override {
    return decoder_load(recipe(c), s, c, W);
  }

 protected:
  virtual DecoderRecipe recipe(const ModelConfig& c) const { return DecoderRecipe::standard(c); }
};

}  // namespace cascade::stage
