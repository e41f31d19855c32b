// Hyperparameters of a checkpoint, read from its config.json by its family.
// Plain data; families fill it, layers read it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace cascade::stage {

// A config.json that a family cannot serve. The message names the key.
class ModelConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct RopeConfig {
  std::string type = "default";  // default | linear | dynamic | llama3 | longrope
  double theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0;       // llama3
  double high_freq_factor = 4.0;      // llama3
  int64_t original_max_position = 0;  // llama3, longrope: original_max_position_embeddings
  // longrope (Phi-3): per-frequency divisors [rotary_dim / 2], the short ones while a
  // sequence fits original_max_position, the long ones past it; cos and sin are
  // multiplied by attention_factor.
  std::vector<double> short_factor, long_factor;
  double attention_factor = 1.0;
  // Only the first head_dim * partial_rotary_factor dims of each head rotate (Phi-4-mini).
  double partial_rotary_factor = 1.0;

  // The position at which a decoding sequence must be recomputed from its tokens, or 0:
  // transformers' Phi-3 generate drops the cache once a sequence grows past the original
  // context (so every key is rotated with the long factors), and Cascade does the same
  // (the drivers re-prefill it: daemon/scheduler, daemon/generate).
  int64_t recompute_at() const { return type == "longrope" ? original_max_position : 0; }

  // The rotated dims of a head of `head_dim` (as transformers rounds it).
  int64_t rotary_dim(int64_t head_dim) const {
    return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor);
  }
};

struct ModelConfig {
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-6;
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
  // Options of the toolkit's common layers (stage/layers/), as config.json sets them.
  bool qkv_bias = false;  // q/k/v projections carry a bias (qwen2, llama attention_bias)
  bool o_bias = false;    // o_proj carries a bias (llama attention_bias)
  bool mlp_bias = false;
  int64_t sliding_window = 0;  // 0 = full attention
  RopeConfig rope;
  std::vector<int64_t> eos_token_ids;
  // >= 0: an encoder-decoder model (T5), whose decoder starts from this token after the
  // encoder has read the prompt (comm::prefill_tokens); -1: decoder-only.
  int64_t decoder_start_token_id = -1;
  bool encoder_decoder() const { return decoder_start_token_id >= 0; }
  // config.json as read: keys that only one family uses stay here, read by that family
  // (e.g. gpt2's scale_attn_by_inverse_layer_idx), rather than becoming fields.
  nlohmann::json json;
};

// Helpers for families: typed reads from config.json with messages that name the key.
namespace cfg {
int64_t get_int(const nlohmann::json& j, const char* key);
int64_t get_int(const nlohmann::json& j, const char* key, int64_t dflt);
double get_double(const nlohmann::json& j, const char* key, double dflt);
bool get_bool(const nlohmann::json& j, const char* key, bool dflt);
std::string get_string(const nlohmann::json& j, const char* key, const std::string& dflt);
// rope_theta/rope_scaling (pre-v5 transformers) or rope_parameters (v5).
RopeConfig read_rope(const nlohmann::json& j);
// Throws ModelConfigError unless `r` fits heads of `head_dim` (an even rotary dim,
// longrope factors for each of its frequencies).
void check_rope(const RopeConfig& r, int64_t head_dim);
std::vector<int64_t> read_eos(const nlohmann::json& j);

// Throws ModelConfigError, naming the value, unless `c` (as a family read it) is a model
// Cascade can lay out: every size positive and within what any checkpoint holds (a
// config.json that says 10^12 layers would otherwise have its modules listed before a
// single tensor is looked for), norm epsilon finite and >= 0, RoPE's numbers finite and
// positive where its type reads them. describe() runs it after every family's
// parse_config.
void check_model_config(const ModelConfig& c);

// The keys most decoder families share, with their usual names (vocab_size,
// hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
// num_key_value_heads, head_dim, max_position_embeddings, rms_norm_eps, hidden_act,
// tie_word_embeddings, mlp_bias, RoPE, eos_token_id), checked for consistency.
struct StandardDefaults {
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
};
ModelConfig read_standard(const nlohmann::json& j, const std::string& model_type, const StandardDefaults& d = {});
}  // namespace cfg

}  // namespace cascade::stage
