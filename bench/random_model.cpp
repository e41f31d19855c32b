// Writes a random-weight Llama checkpoint (config.json + model.safetensors, bf16) for
// benchmarks that need a model of a given size without Python: e.g. the ~134 M
// parameter model of docs/performance.md's pipeline benchmark. With --experts E it is a
// Mixtral instead: every layer's MLP becomes E experts of --intermediate each (stored
// block_sparse_moe.experts.N.w1/w3/w2) under a router, --top-k of them per token.
//   random_model --out DIR [--hidden 768] [--intermediate 2048] [--layers 12] [--heads 12]
//                [--kv-heads 12] [--vocab 32000] [--experts 0] [--top-k 2] [--seed 0]
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "storage/safetensors.h"

int main(int argc, char** argv) {
  std::string out;
  int64_t hidden = 768, inter = 2048, layers = 12, heads = 12, kv_heads = 12, vocab = 32000, experts = 0, top_k = 2;
  uint64_t seed = 0;
  CLI::App app{"Write a random-weight Llama checkpoint"};
  app.add_option("--out", out, "Output directory")->required();
  app.add_option("--hidden", hidden)->capture_default_str();
  app.add_option("--intermediate", inter)->capture_default_str();
  app.add_option("--layers", layers)->capture_default_str();
  app.add_option("--heads", heads)->capture_default_str();
  app.add_option("--kv-heads", kv_heads)->capture_default_str();
  app.add_option("--vocab", vocab)->capture_default_str();
  app.add_option("--experts", experts, "0 = a dense Llama; E = a Mixtral of E experts per layer")
      ->capture_default_str();
  app.add_option("--top-k", top_k, "Experts per token (with --experts)")->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::filesystem::create_directories(out);
  at::manual_seed(seed);
  const int64_t head_dim = hidden / heads;
  std::vector<std::pair<std::string, at::Tensor>> t;
  int64_t params = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool ones = false) {
    at::Tensor x = ones ? at::ones(shape) : at::randn(shape).mul_(0.02);
    params += x.numel();
    t.emplace_back(name, x.to(at::kBFloat16));
  };
  add("model.embed_tokens.weight", {vocab, hidden});
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {hidden}, true);
    add(p + "post_attention_layernorm.weight", {hidden}, true);
    add(p + "self_attn.q_proj.weight", {heads * head_dim, hidden});
    add(p + "self_attn.k_proj.weight", {kv_heads * head_dim, hidden});
    add(p + "self_attn.v_proj.weight", {kv_heads * head_dim, hidden});
    add(p + "self_attn.o_proj.weight", {hidden, heads * head_dim});
    if (experts == 0) {
      add(p + "mlp.gate_proj.weight", {inter, hidden});
      add(p + "mlp.up_proj.weight", {inter, hidden});
      add(p + "mlp.down_proj.weight", {hidden, inter});
      continue;
    }
    add(p + "block_sparse_moe.gate.weight", {experts, hidden});
    for (int64_t e = 0; e < experts; ++e) {
      const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      add(x + "w1.weight", {inter, hidden});
      add(x + "w3.weight", {inter, hidden});
      add(x + "w2.weight", {hidden, inter});
    }
  }
  add("model.norm.weight", {hidden}, true);
  add("lm_head.weight", {vocab, hidden});
  cascade::storage::write_safetensors(out + "/model.safetensors", t, {{"format", "pt"}});
  nlohmann::json cfg = {{"model_type", "llama"},
                        {"architectures", {"LlamaForCausalLM"}},
                        {"hidden_size", hidden},
                        {"intermediate_size", inter},
                        {"num_hidden_layers", layers},
                        {"num_attention_heads", heads},
                        {"num_key_value_heads", kv_heads},
                        {"vocab_size", vocab},
                        {"rms_norm_eps", 1e-5},
                        {"rope_theta", 10000.0},
                        {"max_position_embeddings", 4096},
                        {"tie_word_embeddings", false},
                        {"torch_dtype", "bfloat16"},
                        {"bos_token_id", 1},
                        {"eos_token_id", 2}};
  if (experts > 0) {
    cfg["model_type"] = "mixtral";
    cfg["architectures"] = {"MixtralForCausalLM"};
    cfg["num_local_experts"] = experts;
    cfg["num_experts_per_tok"] = top_k;
    cfg["sliding_window"] = nullptr;
  }
  std::ofstream(out + "/config.json") << cfg.dump(2) << "\n";
  std::cout << "random_model: " << params << " parameters (" << params * 2 / 1e6 << " MB in bf16) in " << out << "\n";
  return 0;
}
