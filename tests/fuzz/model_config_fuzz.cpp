// libFuzzer: a checkpoint's config.json as the shared reader of the decoder families
// takes it (stage/model_config.h: read_standard, then check_model_config, which
// describe() runs after every family). Whatever the bytes, a config comes back or
// ModelConfigError is thrown (never nlohmann's exceptions, which would reach the user
// as a bare JSON error without the key), and a config that comes back is one Cascade
// can lay out: sizes positive and bounded, norm epsilon and RoPE numbers finite.
#include <cmath>
#include <string>

#include "stage/model_config.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;  // not JSON: Checkpoint::open reports that
  try {
    const stage::ModelConfig c = stage::cfg::read_standard(j, "llama");
    stage::cfg::check_model_config(c);
    const bool laid_out = c.num_layers >= 1 && c.num_layers <= (1 << 14) && c.hidden_size >= 1 && c.num_heads >= 1 &&
                          c.num_kv_heads >= 1 && c.num_heads % c.num_kv_heads == 0 && c.head_dim >= 1 &&
                          c.vocab_size >= 1 && c.intermediate_size >= 1;
    if (!laid_out) fuzz::broken("a config with sizes no model has", j.dump());
    if (!std::isfinite(c.norm_eps) || !(c.rope.theta > 0) || !std::isfinite(c.rope.theta) || !(c.rope.factor > 0))
      fuzz::broken("a config whose numbers give NaNs", j.dump());
    if (c.rope.rotary_dim(c.head_dim) < 2 || c.rope.rotary_dim(c.head_dim) % 2 != 0)
      fuzz::broken("RoPE over an odd or empty set of dims", j.dump());
  } catch (const stage::ModelConfigError&) {
  }
  return 0;
}
