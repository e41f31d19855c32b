// Self-attention of the layer toolkit: projections, a pluggable position encoding, and
// the KV cache (stage/kv_cache.h). Options cover the families of DESIGN §5: grouped
// KV heads (GQA), a sliding window, logit soft-capping, per-head q/k norms, biases,
// separate or fused q/k/v projections, RoPE with every scaling, ALiBi, or nothing
// (learned positions are added by the embedding).
//
// A family describes its attention once (AttentionSpec + AttentionNames) and uses the
// same description to declare the tensors and costs (declare()) and to build the layer.
// Not thread-safe; one step loop drives it.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "stage/family.h"
#include "stage/layers/linear.h"
#include "stage/layers/norm.h"
#include "stage/layers/rope.h"
#include "stage/model_config.h"

namespace cascade::stage {

enum class PositionKind { kRope, kAlibi, kNone };

struct AttentionSpec {
  int64_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0;
  double scale = 0;    // multiplies q.k; 0 = 1/sqrt(head_dim)
  int64_t window = 0;  // sliding window in tokens; 0 = full attention
  double softcap = 0;  // scores become softcap * tanh(scores / softcap); 0 = off
  PositionKind position = PositionKind::kRope;
  RopeConfig rope;           // kRope
  int64_t max_position = 0;  // kRope: max_position_embeddings
  bool qkv_bias = false, o_bias = false;
  std::optional<NormKind> qk_norm;  // per-head norm of q and k over head_dim (before RoPE)
  double qk_norm_eps = 1e-6;
  // Whether its K/V take KV-cache positions of their own, which declare() charges per
  // token. Not T5's encoder (it runs once per request) nor its cross-attention, whose
  // K/V sit at the encoder's positions of the slot (stage/layers/seq2seq.h).
  bool charges_kv = true;

  static AttentionSpec of(const ModelConfig& c);  // the common case, from a ModelConfig
};

// Tensor names under the layer's attention prefix. `qkv` non-empty: one fused
// projection (q, k and v side by side) instead of `q`, `k`, `v`.
struct AttentionNames {
  std::string q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj";
  std::string qkv;
  bool qkv_per_head = false;  // the fused rows go head by head, [heads, 3, head_dim] (Bloom)
  std::string q_norm = "q_norm", k_norm = "k_norm";
  bool conv1d = false;  // GPT-2's Conv1D projections ([in, out])
};

class Attention {
 public:
  // Adds the attention's tensors, FLOPs, KV and score sizes to `s`.
  static void declare(ModuleSpec* s, const AttentionSpec& a, const std::string& prefix, const AttentionNames& n = {});

  Attention(const AttentionSpec& a, int64_t layer, const WeightSource& W, const std::string& prefix,
            const AttentionNames& n = {});
  // On a GPU, separate q/k/v projections become one matmul (see Module::finalize).
  void finalize();
  // x [tokens, hidden], already normed -> [tokens, hidden], after the output projection;
  // plus `residual` when defined (the add fused into the projection where it can be;
  // written into `residual` when residual_spent: Linear::add_to's r_spent).
  at::Tensor operator()(const at::Tensor& x, StepContext& ctx, const at::Tensor& residual = {},
                        bool residual_spent = false);

  // Bloom's ALiBi slopes for `heads` heads (any count, not only powers of two): [heads] float32.
  static at::Tensor alibi_slopes(int64_t heads);

 private:
  AttentionSpec a_;
  int64_t layer_;
  bool qkv_per_head_ = false;
  std::optional<Rope> rope_;
  at::Tensor alibi_;  // [heads] float32 on the compute device
  Linear q_, k_, v_, qkv_, o_;
  std::optional<Norm> q_norm_, k_norm_;
};

}  // namespace cascade::stage
