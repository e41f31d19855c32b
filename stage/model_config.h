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
  std::string type = "default";  // default | linear | dynamic | llama3
  double theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0;       // llama3
  double high_freq_factor = 4.0;      // llama3
  int64_t original_max_position = 0;  // llama3: original_max_position_embeddings
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
  bool qkv_bias = false;  // q/k/v projections carry a bias (qwen2, llama attention_bias)
  bool o_bias = false;    // o_proj carries a bias (llama attention_bias)
  bool mlp_bias = false;
  int64_t sliding_window = 0;                    // 0 = full attention
  bool scale_attn_by_inverse_layer_idx = false;  // gpt2
  RopeConfig rope;
  std::vector<int64_t> eos_token_ids;
  double int8_threshold = 6.0;  // LLM.int8 outlier threshold; set by Model::load from LoadOptions
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
std::vector<int64_t> read_eos(const nlohmann::json& j);
}  // namespace cfg

}  // namespace cascade::stage
