#include "stage/family.h"

#include <map>

#include "storage/checkpoint.h"

namespace cascade::stage {

// The registry: one entry per family, `X(f)` for the `const Family& f_family()` that
// stage/families/<file>.cpp defines; the family's name() is its model_type.
#define CASCADE_FAMILIES(X) \
  X(llama) X(mistral) X(qwen2) X(gpt2) X(gemma) X(gemma2) X(qwen3) X(mixtral) X(qwen3_moe) X(phi3) X(bloom) X(t5) X(mt5)

#define CASCADE_DECLARE_FAMILY(f) const Family& f##_family();
CASCADE_FAMILIES(CASCADE_DECLARE_FAMILY)
#undef CASCADE_DECLARE_FAMILY

namespace {

const std::map<std::string, const Family*>& registry() {
  static const std::map<std::string, const Family*> r = [] {
    std::map<std::string, const Family*> m;
#define CASCADE_REGISTER_FAMILY(f) m[f##_family().name()] = &f##_family();
    CASCADE_FAMILIES(CASCADE_REGISTER_FAMILY)
#undef CASCADE_REGISTER_FAMILY
    return m;
  }();
  return r;
}

}  // namespace

void ModuleSpec::add_linear(const std::string& prefix, int64_t out, int64_t in, bool bias, bool conv1d, double active) {
  tensors.push_back(prefix + ".weight");
  if (bias) tensors.push_back(prefix + ".bias");
  int8[prefix + ".weight"] = conv1d ? Int8Layout::kTransposed : Int8Layout::kRows;
  cost.flops_per_token += 2.0 * static_cast<double>(out) * static_cast<double>(in) * active;
  if (active < 1.0) {
    cost.read_share[prefix + ".weight"] = active;
    if (bias) cost.read_share[prefix + ".bias"] = active;
  }
}

Int8Layout ModuleSpec::int8_layout(const std::string& tensor) const {
  const auto it = int8.find(tensor);
  return it == int8.end() ? Int8Layout::kNone : it->second;
}

ModuleSpec lm_head_spec(const ModelConfig& c, const storage::Checkpoint& ck, const std::string& embedding) {
  if (!c.tie_word_embeddings && !ck.has("lm_head.weight")) {
    throw storage::StorageError(ck.dir() +
                                ": tensor 'lm_head.weight' is missing and config.json does not tie embeddings");
  }
  ModuleSpec head{"lm_head", ModuleKind::kLmHead, -1, {c.tie_word_embeddings ? embedding : "lm_head.weight"}, {}, {}};
  head.cost.flops_per_token = 2.0 * static_cast<double>(c.vocab_size * c.hidden_size);
  return head;
}

std::string transformer_prefix(const storage::Checkpoint& ck, const std::string& family, const std::string& probe) {
  if (ck.has("transformer." + probe)) return "transformer.";
  if (ck.has(probe)) return "";
  throw storage::StorageError(ck.dir() + ": " + family + " checkpoint has neither 'transformer." + probe + "' nor '" +
                              probe + "'");
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const auto& [k, v] : registry()) out.push_back(k);
  return out;
}

const Family& find_family(const std::string& model_type) {
  const auto it = registry().find(model_type);
  if (it == registry().end()) {
    std::string list;
    for (const auto& t : supported_model_types()) list += (list.empty() ? "" : ", ") + t;
    throw ModelConfigError("config.json: model_type '" + model_type + "' is not supported (supported: " + list + ")");
  }
  return *it->second;
}

}  // namespace cascade::stage
