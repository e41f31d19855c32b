#include "stage/model_config.h"

#include <cmath>

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

namespace {

std::vector<double> get_factors(const nlohmann::json& params, const char* key) {
  if (!params.contains(key) || !params[key].is_array()) bad(key, "must be a list of numbers (rope scaling 'longrope')");
  std::vector<double> out;
  for (const auto& x : params[key]) {
    if (!x.is_number() || x.get<double>() <= 0) bad(key, "must hold positive numbers");
    out.push_back(x.get<double>());
  }
  return out;
}

// Phi-3's LongRoPE, as transformers computes it: when config.json has a top-level
// original_max_position_embeddings, the scale is max_position_embeddings over it;
// the default attention factor is sqrt(1 + ln(scale) / ln(original)).
void read_longrope(const nlohmann::json& j, const nlohmann::json& params, RopeConfig* r) {
  r->short_factor = get_factors(params, "short_factor");
  r->long_factor = get_factors(params, "long_factor");
  if (r->short_factor.size() != r->long_factor.size()) bad("long_factor", "must be as long as 'short_factor'");
  const int64_t max_pos = get_int(j, "max_position_embeddings", 2048);
  const int64_t top = get_int(j, "original_max_position_embeddings", 0);
  r->original_max_position = get_int(params, "original_max_position_embeddings", top > 0 ? top : max_pos);
  if (r->original_max_position <= 0) bad("original_max_position_embeddings", "must be positive");
  const double orig = static_cast<double>(r->original_max_position);
  r->factor = top > 0 ? static_cast<double>(max_pos) / orig : get_double(params, "factor", 1.0);
  r->attention_factor = get_double(params, "attention_factor", 0);
  if (r->attention_factor <= 0)
    r->attention_factor = r->factor <= 1 ? 1.0 : std::sqrt(1 + std::log(r->factor) / std::log(orig));
}

}  // namespace

RopeConfig read_rope(const nlohmann::json& j) {
  RopeConfig r;
  r.theta = get_double(j, "rope_theta", 10000.0);
  r.partial_rotary_factor = get_double(j, "partial_rotary_factor", 1.0);
  nlohmann::json params;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object())
    params = j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object())
    params = j["rope_scaling"];
  if (params.is_null()) return r;
  r.theta = get_double(params, "rope_theta", r.theta);
  r.partial_rotary_factor = get_double(params, "partial_rotary_factor", r.partial_rotary_factor);
  r.type = get_string(params, "rope_type", get_string(params, "type", "default"));
  if (r.type == "su") r.type = "longrope";  // the name early Phi-3 configs used
  if (r.type == "default") return r;
  if (r.type == "longrope") {
    read_longrope(j, params, &r);
    return r;
  }
  if (r.type != "linear" && r.type != "dynamic" && r.type != "llama3") {
    throw ModelConfigError("config.json: rope type '" + r.type +
                           "' is not supported (supported: default, linear, dynamic, llama3, longrope)");
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

void check_rope(const RopeConfig& r, int64_t head_dim) {
  if (r.partial_rotary_factor <= 0 || r.partial_rotary_factor > 1) bad("partial_rotary_factor", "must be in (0, 1]");
  const int64_t rot = r.rotary_dim(head_dim);
  if (rot < 2 || rot % 2 != 0)
    bad("partial_rotary_factor", "leaves " + std::to_string(rot) + " rotated dims of " + std::to_string(head_dim) +
                                     "; RoPE needs an even number");
  if (r.type == "longrope" && static_cast<int64_t>(r.short_factor.size()) != rot / 2)
    bad("short_factor", "has " + std::to_string(r.short_factor.size()) + " entries; heads of " + std::to_string(rot) +
                            " rotated dims need " + std::to_string(rot / 2));
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

namespace {

void check_range(const ModelConfig& c, const char* what, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    throw ModelConfigError("config.json: " + c.model_type + "'s " + what + " is " + std::to_string(v) +
                           "; it must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

void check_number(const ModelConfig& c, const char* what, double v, bool zero_ok) {
  if (!std::isfinite(v) || v < 0 || (!zero_ok && v == 0))
    throw ModelConfigError("config.json: " + c.model_type + "'s " + what + " is " + std::to_string(v) +
                           "; it must be a finite number " + (zero_ok ? ">= 0" : "> 0"));
}

}  // namespace

void check_model_config(const ModelConfig& c) {
  constexpr int64_t kMostWidth = int64_t{1} << 22, kMostHeads = int64_t{1} << 16, kMostLayers = int64_t{1} << 14;
  check_range(c, "vocabulary size", c.vocab_size, 1, int64_t{1} << 26);
  check_range(c, "hidden size", c.hidden_size, 1, kMostWidth);
  check_range(c, "intermediate (MLP) size", c.intermediate_size, 1, kMostWidth);
  check_range(c, "number of layers", c.num_layers, 1, kMostLayers);
  check_range(c, "number of attention heads", c.num_heads, 1, kMostHeads);
  check_range(c, "number of key/value heads", c.num_kv_heads, 1, c.num_heads);
  check_range(c, "head size", c.head_dim, 1, kMostWidth);
  check_range(c, "max_position_embeddings", c.max_position_embeddings, 0, int64_t{1} << 30);
  check_range(c, "sliding window", c.sliding_window, 0, int64_t{1} << 30);
  check_number(c, "norm epsilon", c.norm_eps, true);
  const RopeConfig& r = c.rope;
  check_number(c, "rope_theta", r.theta, false);
  check_number(c, "RoPE scaling factor", r.factor, false);
  check_number(c, "RoPE attention_factor", r.attention_factor, false);
  if (r.type == "llama3") {
    check_number(c, "RoPE low_freq_factor", r.low_freq_factor, false);
    if (!(r.high_freq_factor > r.low_freq_factor) || !std::isfinite(r.high_freq_factor))
      throw ModelConfigError("config.json: " + c.model_type + "'s RoPE high_freq_factor must be finite and above " +
                             "low_freq_factor (" + std::to_string(r.low_freq_factor) + ")");
    check_range(c, "RoPE original_max_position_embeddings", r.original_max_position, 1, int64_t{1} << 30);
  }
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
  check_rope(c.rope, c.head_dim);
  c.eos_token_ids = read_eos(j);
  return c;
}

}  // namespace cascade::stage::cfg
