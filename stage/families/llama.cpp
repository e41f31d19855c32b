// The llama family and its close relatives: mistral (sliding window) and qwen2
// (q/k/v biases). The standard decoder layout (stage/layers/decoder.h): RMSNorm ->
// GQA attention with RoPE -> residual -> RMSNorm -> gated MLP -> residual.
#include "stage/family.h"
#include "stage/layers/decoder.h"

namespace cascade::stage {
namespace {

enum class Variant { kLlama, kMistral, kQwen2 };

class LlamaFamily : public DecoderFamily {
 public:
  explicit LlamaFamily(Variant v) : v_(v) {}

  const char* name() const override {
    return v_ == Variant::kLlama ? "llama" : v_ == Variant::kMistral ? "mistral" : "qwen2";
  }

  ModelConfig parse_config(const nlohmann::json& j) const override {
    ModelConfig c = cfg::read_standard(j, name());
    parse_activation(c.hidden_act);
    switch (v_) {
      case Variant::kLlama:
        c.qkv_bias = c.o_bias = cfg::get_bool(j, "attention_bias", false);
        break;
      case Variant::kMistral:
        c.sliding_window = cfg::get_int(j, "sliding_window", 0);
        break;
      case Variant::kQwen2:
        c.qkv_bias = true;
        if (cfg::get_bool(j, "use_sliding_window", false)) {
          throw ModelConfigError("config.json: qwen2 'use_sliding_window': true is not supported");
        }
        break;
    }
    return c;
  }

 private:
  Variant v_;
};

}  // namespace

const Family& llama_family() {
  static const LlamaFamily f(Variant::kLlama);
  return f;
}
const Family& mistral_family() {
  static const LlamaFamily f(Variant::kMistral);
  return f;
}
const Family& qwen2_family() {
  static const LlamaFamily f(Variant::kQwen2);
  return f;
}

}  // namespace cascade::stage
