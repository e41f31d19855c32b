#include "stage/family.h"

#include <map>

namespace cascade::stage {
namespace {

const std::map<std::string, const Family*>& registry() {
  static const std::map<std::string, const Family*> r = {
      {"llama", &llama_family()},
      {"mistral", &mistral_family()},
      {"qwen2", &qwen2_family()},
      {"gpt2", &gpt2_family()},
  };
  return r;
}

}  // namespace

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
