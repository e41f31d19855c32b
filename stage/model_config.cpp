#include "stage/model_config.h"

namespace cascade::stage::cfg {
namespace {

[[noreturn]] void bad(const char* key, const std::string& what) {
  throw ModelConfigError("config.json: '" + std::string(key) + "' " + what);
}

}  // namespace

int64_t get_int(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) bad(key, "is required");
  if (!j[key].is_number_integer()) bad(key, "must be an integer");
  return j[key].get<int64_t>();
}

int64_t get_int(const nlohmann::json& j, const char* key, int64_t dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  return get_int(j, key);
}

double get_double(const nlohmann::json& j, const char* key, double dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number()) bad(key, "must be a number");
  return j[key].get<double>();
}

bool get_bool(const nlohmann::json& j, const char* key, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) bad(key, "must be true or false");
  return j[key].get<bool>();
}

std::string get_string(const nlohmann::json& j, const char* key, const std::string& dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_string()) bad(key, "must be a string");
  return j[key].get<std::string>();
}

RopeConfig read_rope(const nlohmann::json& j) {
  RopeConfig r;
  r.theta = get_double(j, "rope_theta", 10000.0);
  nlohmann::json params;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object())
    params = j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object())
    params = j["rope_scaling"];
  if (params.is_null()) return r;
  r.theta = get_double(params, "rope_theta", r.theta);
  r.type = get_string(params, "rope_type", get_string(params, "type", "default"));
  if (r.type == "default") return r;
  if (r.type != "linear" && r.type != "dynamic" && r.type != "llama3") {
    throw ModelConfigError("config.json: rope type '" + r.type +
                           "' is not supported (supported: default, linear, dynamic, llama3)");
  }
  if (!params.contains("factor")) throw ModelConfigError("config.json: rope scaling '" + r.type + "' needs 'factor'");
  r.factor = get_double(params, "factor", 1.0);
  if (r.type == "llama3") {
    r.low_freq_factor = get_double(params, "low_freq_factor", 1.0);
    r.high_freq_factor = get_double(params, "high_freq_factor", 4.0);
    r.original_max_position = get_int(params, "original_max_position_embeddings");
  }
  return r;
}

std::vector<int64_t> read_eos(const nlohmann::json& j) {
  std::vector<int64_t> out;
  if (!j.contains("eos_token_id")) return out;
  const auto& e = j["eos_token_id"];
  if (e.is_number_integer())
    out.push_back(e.get<int64_t>());
  else if (e.is_array()) {
    for (const auto& x : e) {
      if (x.is_number_integer()) out.push_back(x.get<int64_t>());
    }
  }
  return out;
}

ModelConfig read_standard(const nlohmann::json& j, const std::string& model_type, const StandardDefaults& d) {
  ModelConfig c;
  c.model_type = model_type;
  c.vocab_size = get_int(j, "vocab_size");
  c.hidden_size = get_int(j, "hidden_size");
  c.intermediate_size = get_int(j, "intermediate_size");
  c.num_layers = get_int(j, "num_hidden_layers");
  c.num_heads = get_int(j, "num_attention_heads");
  c.num_kv_heads = get_int(j, "num_key_value_heads", c.num_heads);
  if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0) {
    throw ModelConfigError("config.json: hidden_size must be a positive multiple of num_attention_heads");
  }
  c.head_dim = get_int(j, "head_dim", c.hidden_size / c.num_heads);
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    throw ModelConfigError("config.json: num_attention_heads must be a multiple of num_key_value_heads");
  }
  c.max_position_embeddings = get_int(j, "max_position_embeddings", 2048);
  c.norm_eps = get_double(j, "rms_norm_eps", 1e-6);
  c.hidden_act = get_string(j, "hidden_act", d.hidden_act);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", d.tie_word_embeddings);
  c.mlp_bias = get_bool(j, "mlp_bias", false);
  c.rope = read_rope(j);
  c.eos_token_ids = read_eos(j);
  return c;
}

}  // namespace cascade::stage::cfg
