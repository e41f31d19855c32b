// Feed-forward blocks of the layer toolkit:
//   gated  act(gate(x)) * up(x) -> down   (llama's SwiGLU, gemma's GeGLU, ...)
//   plain  act(fc(x)) -> proj             (GPT-2, Bloom)
//   MoE    a router picks top_k of E gated experts per token; each expert's output is
//          weighted by its (optionally renormalised) router probability (Mixtral,
//          Qwen3-MoE). Tokens are grouped by expert, so each expert's weights are read
//          once per step.
// As with attention, one description (MlpSpec + MlpNames) declares the tensors and
// costs and builds the layer. Not thread-safe; one step loop drives it.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "stage/family.h"
#include "stage/kernels/ops.h"
#include "stage/layers/linear.h"

namespace cascade::stage {

enum class MlpKind { kGated, kPlain, kMoe };

struct MlpSpec {
  MlpKind kind = MlpKind::kGated;
  int64_t hidden = 0, intermediate = 0;  // MoE: intermediate is each expert's
  Activation act = Activation::kSilu;
  bool bias = false;
  int64_t experts = 0, top_k = 0;  // kMoe
  bool normalize_top_k = true;     // kMoe: top-k probabilities renormalised to sum to 1
};

// Tensor names under the layer's MLP prefix. Experts are `experts.<e>.` + the gated
// names; the router is `router`.
struct MlpNames {
  std::string gate = "gate_proj", up = "up_proj", down = "down_proj";  // kGated (and each expert)
  std::string gate_up;                       // kGated, non-empty: one fused projection, gate rows then up rows (Phi-3)
  std::string fc = "c_fc", proj = "c_proj";  // kPlain
  std::string router = "gate", experts = "experts";  // kMoe
  bool conv1d = false;
};

class Mlp {
 public:
  // Adds the MLP's tensors, FLOPs (MoE: only the active experts') and activation size to `s`.
  static void declare(ModuleSpec* s, const MlpSpec& m, const std::string& prefix, const MlpNames& n = {});

  Mlp(const MlpSpec& m, const WeightSource& W, const std::string& prefix, const MlpNames& n = {});
  // On a GPU, gate and up become one matmul (see Module::finalize).
  void finalize();
  at::Tensor operator()(const at::Tensor& x);  // [tokens, hidden] -> [tokens, hidden]
  // r + (*this)(x), the add fused into the down projection where it can be.
  // r_spent: the caller reads r no more, so the sum may be written into it
  // (Linear::add_to); use the result, not r.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& r, bool r_spent = false);
  // A mixture of experts groups tokens by expert on the host: no CUDA graph.
  bool capturable() const { return m_.kind != MlpKind::kMoe; }

 private:
  struct Gated {
    Linear gate, up, down, gate_up;  // gate_up: set by finalize(), which empties gate and up
    // r (when defined) + down(act(gate(x)) * up(x)).
    at::Tensor operator()(const at::Tensor& x, Activation act, const at::Tensor& r = {}, bool r_spent = false) const;
  };
  at::Tensor moe(const at::Tensor& x);

  MlpSpec m_;
  Gated gated_;
  Linear fc_, proj_;            // kPlain
  Linear router_;               // kMoe: [experts, hidden]
  std::vector<Gated> experts_;  // kMoe
};

}  // namespace cascade::stage
