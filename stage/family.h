// Model families: everything Cascade knows about a `model_type` lives behind this
// interface (DESIGN §5), so nothing outside stage/ knows a family.
//
// A family (one file in stage/families/, registered in families/registry.cpp) turns
// config.json into a ModelConfig, lists the model's modules in execution order
// (embeddings, each decoder layer, final norm, LM head; module names follow
// hf_device_map) with what each costs and which of its weights LLM.int8 may quantize,
// and builds a runnable Module from a ModuleSpec out of the layer toolkit
// (stage/layers/). Families are stateless singletons, safe to use from any thread. A
// Module owns its weights; it is used by one stage's step loop at a time.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
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

struct Seq2SeqRows;  // stage/layers/seq2seq.h

// kEncoderLayer / kEncoderNorm: the encoder stack of an encoder-decoder model (T5),
// which runs once per request over its input and keeps no KV cache; the decoder
// layers' cross-attention reads the encoder norm's output.
// kExperts: the feed-forward half of a mixture-of-experts layer (its norm, router and
// experts), a module of its own right after its layer's attention half (kDecoderLayer),
// so the planner can place experts apart from attention (e.g. attention on the GPU,
// experts computed on the CPU).
enum class ModuleKind { kEmbedding, kEncoderLayer, kEncoderNorm, kDecoderLayer, kExperts, kFinalNorm, kLmHead };

// How LLM.int8 lays a quantizable weight out: nn.Linear weights are stored [out, in]
// (kRows); GPT-2's Conv1D weights [in, out] and are quantized as their transpose.
enum class Int8Layout { kNone, kRows, kTransposed };

// What the planner charges for a module, as its family declares it (counts, not
// bytes: the planner multiplies by the compute dtype's size).
struct ModuleCost {
  double flops_per_token = 0;       // forward FLOPs per token (a multiply-add is 2)
  int64_t kv_elems_per_token = 0;   // K + V elements cached per token
  int64_t act_elems_per_token = 0;  // transient activations per token of a step, at their peak
  int64_t score_heads = 0;          // heads whose float32 [chunk, max_seq_len] scores a prefill holds at once
  // Tensors a token reads only a share of: an expert's weights, top_k/E. Absent = 1.
  // The planner's cost model reads a one-token step's bytes from it.
  std::map<std::string, double> read_share;
};

struct ModuleSpec {
  std::string name;  // hf_device_map's: "model.embed_tokens", "model.layers.3", "model.norm", "lm_head"
  ModuleKind kind = ModuleKind::kDecoderLayer;
  int64_t layer = -1;                // layer index within its stack (encoder or decoder), else -1
  std::vector<std::string> tensors;  // checkpoint tensor names it reads (tied ones included)
  // The weights LLM.int8 may quantize (2-D projections), and their layout.
  std::map<std::string, Int8Layout> int8;
  ModuleCost cost;

  // Declares a projection weight `prefix`.weight ([out, in], or [in, out] for a
  // Conv1D) and its bias: its tensors, its FLOPs (times `active`, the share of tokens
  // that use it: k/E for an expert), and that LLM.int8 may quantize it.
  void add_linear(const std::string& prefix, int64_t out, int64_t in, bool bias, bool conv1d = false,
                  double active = 1.0);
  // How LLM.int8 lays out `tensor` of this module (kNone: not quantizable).
  Int8Layout int8_layout(const std::string& tensor) const;
};

// Per-step state shared by the modules of one stage.
struct StepContext {
  const Batch& batch;
  at::Tensor positions;  // [tokens] int64 on the compute device
  KvCache* kv = nullptr;
  // Rotary cos/sin [tokens, rotary_dim] in the compute dtype for this step, computed by
  // the first layer that needs them and reused by the rest.
  at::Tensor rope_cos, rope_sin;
  // Defined when every sequence adds one token: layers then take the batched decode path.
  DecodeIndex decode;
  // Otherwise, on a GPU: each row's slot and position, built by the first layer that
  // needs them (rotary attention's fused store), reused by the rest.
  RowIndex rows = {};
  // An encoder-decoder step's rows (stage/layers/seq2seq.h): built by the first module
  // that needs them (Seq2SeqRows::of), reused by the rest.
  std::shared_ptr<const Seq2SeqRows> seq2seq_rows = nullptr;
  // [rows] int64 on the compute device: the rows the LM head returns, where a prompt's
  // CUDA graph (DecodeGraphs::run_prompt) pads the step past the batch's own rows;
  // undefined: Batch::logit_rows.
  at::Tensor logit_rows = {};
  // Set by Model::run_modules for each module: true when the module's input is an
  // earlier module's output of this step, which nothing reads after this module; the
  // module may then write into it (a residual add into its projection's GEMM). False
  // for the range's first module, whose input may be a CUDA graph's static input.
  bool input_spent = false;
};

class Module {
 public:
  virtual ~Module() = default;
  // Embedding: token ids [tokens] -> hidden [tokens, hidden].
  // Decoder layer / final norm: hidden [tokens, hidden] -> hidden [tokens, hidden].
  // LM head: hidden [tokens, hidden] -> logits at each sequence's last token [seqs, vocab], or at
  // every token of the sequences that ask for all_logits (Batch::logit_rows).
  virtual at::Tensor forward(const at::Tensor& x, StepContext& ctx) = 0;
  // Called once after every weight of a memory-resident module has landed on its device
  // (never for streamed or disk-tier modules, whose weights are views that change):
  // a module may re-lay its weights out here, e.g. fuse projections that share an input.
  virtual void finalize() {}
  // False when a decode step through this module syncs with the host (e.g. a mixture of
  // experts reading its routing), so it cannot be captured in a CUDA graph.
  virtual bool capturable() const { return true; }
};

// What a Module reads its weights through while it is built (Model::load provides it).
struct WeightSource {
  // A weight in the compute dtype on the compute device (int8 [out, in] when LLM.int8
  // quantized it; its float32 row scales are then "<name>:scale"). Checks the stored
  // shape against `expected` (empty = no check) and throws a message naming the tensor.
  std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& expected)> get;
  double int8_threshold = 0;  // LLM.int8's outlier threshold (quantization.threshold)

  at::Tensor operator()(const std::string& name, const std::vector<int64_t>& expected) const {
    return get(name, expected);
  }
};

class Family {
 public:
  virtual ~Family() = default;
  virtual const char* name() const = 0;
  virtual ModelConfig parse_config(const nlohmann::json& config) const = 0;
  virtual std::vector<ModuleSpec> modules(const ModelConfig& cfg, const storage::Checkpoint& ck) const = 0;
  virtual std::unique_ptr<Module> load(const ModuleSpec& spec, const ModelConfig& cfg,
                                       const WeightSource& weights) const = 0;
};

// The LM head's spec: "lm_head" reading `embedding` (e.g. "model.embed_tokens.weight")
// when config.json ties embeddings, else lm_head.weight, which must then exist (throws
// storage::StorageError naming it).
ModuleSpec lm_head_spec(const ModelConfig& c, const storage::Checkpoint& ck, const std::string& embedding);

// Where a checkpoint saved from a *ForCausalLM with base_model_prefix "transformer"
// (GPT-2, Bloom) puts its tensors: "transformer." when it has "transformer.<probe>",
// "" when it has "<probe>" (the original hub files, saved from the bare model); throws
// storage::StorageError naming both otherwise.
std::string transformer_prefix(const storage::Checkpoint& ck, const std::string& family, const std::string& probe);

// The family registered for `model_type` (stage/families/registry.cpp); throws
// ModelConfigError listing the supported ones.
const Family& find_family(const std::string& model_type);
std::vector<std::string> supported_model_types();

}  // namespace cascade::stage
