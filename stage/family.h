// Model families: everything Cascade knows about a `model_type` lives behind this
// interface (DESIGN §5), so nothing outside stage/ knows a family.
//
// A family turns config.json into a ModelConfig, lists the model's modules in
// execution order (embeddings, each decoder layer, final norm, LM head; module names
// follow hf_device_map), and builds a runnable Module from a ModuleSpec. Families are
// stateless singletons, safe to use from any thread. A Module owns its weights; it is
// used by one stage's step loop at a time.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "stage/batch.h"
#include "stage/kv_cache.h"
#include "stage/model_config.h"

namespace cascade::storage {
class Checkpoint;
}

namespace cascade::stage {

enum class ModuleKind { kEmbedding, kDecoderLayer, kFinalNorm, kLmHead };

struct ModuleSpec {
  std::string name;  // "model.embed_tokens", "model.layers.3", "model.norm", "lm_head"
  ModuleKind kind = ModuleKind::kDecoderLayer;
  int64_t layer = -1;                // decoder layer index, else -1
  std::vector<std::string> tensors;  // checkpoint tensor names it reads (tied ones included)
};

// Per-step state shared by the modules of one stage.
struct StepContext {
  const Batch& batch;
  at::Tensor positions;  // [tokens] int64 on the compute device
  KvCache* kv = nullptr;
  // Rotary cos/sin [tokens, head_dim] in the compute dtype for this step, computed by
  // the first layer that needs them and reused by the rest.
  at::Tensor rope_cos, rope_sin;
  // Defined when every sequence adds one token: layers then take the batched decode path.
  DecodeIndex decode;
};

class Module {
 public:
  virtual ~Module() = default;
  // Embedding: token ids [tokens] -> hidden [tokens, hidden].
  // Decoder layer / final norm: hidden [tokens, hidden] -> hidden [tokens, hidden].
  // LM head: hidden [tokens, hidden] -> logits [seqs, vocab] at each sequence's last token.
  virtual at::Tensor forward(const at::Tensor& x, StepContext& ctx) = 0;
  // Called once after every weight of a memory-resident module has landed on its device
  // (never for streamed or disk-tier modules, whose weights are views that change):
  // a module may re-lay its weights out here, e.g. fuse projections that share an input.
  virtual void finalize() {}
};

// Fetches a weight in the compute dtype on the compute device. Checks the shape
// against `expected` (empty = no check) and throws a message naming the tensor.
using WeightSource = std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& expected)>;

class Family {
 public:
  virtual ~Family() = default;
  virtual const char* name() const = 0;
  virtual ModelConfig parse_config(const nlohmann::json& config) const = 0;
  virtual std::vector<ModuleSpec> modules(const ModelConfig& cfg, const storage::Checkpoint& ck) const = 0;
  virtual std::unique_ptr<Module> load(const ModuleSpec& spec, const ModelConfig& cfg,
                                       const WeightSource& weights) const = 0;
};

// The family registered for `model_type`; throws ModelConfigError listing the supported ones.
const Family& find_family(const std::string& model_type);
std::vector<std::string> supported_model_types();

// Families register themselves (llama.cpp, gpt2.cpp).
const Family& llama_family();
const Family& mistral_family();
const Family& qwen2_family();
const Family& gpt2_family();

}  // namespace cascade::stage
