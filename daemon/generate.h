// `cascade generate`: continue prompts, either with the whole checkpoint in this
// process (--model) or with a plan (--config), through the same Executor loop. A plan
// of one stage loads in this process too (startup.h: runs_here), others start their
// stage processes. All prompts run together as one ragged batch (one KV slot
// each), so this is also the simplest end-to-end check of batched prefill and decode.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "stage/sampler.h"

namespace cascade::daemon {

struct GenerateOptions {
  std::string model_dir;               // --model: the whole model in this process
  std::string config_file;             // --config: the plan (one stage: in this process)
  bool spawn_stages = false;           // --spawn-stages: a one-stage plan's stage in a process too
  std::vector<std::string> overrides;  // --set, with --config
  std::vector<std::vector<int64_t>> prompts;
  std::vector<std::string> prompt_texts;  // encoded with the model's tokenizer.json (BOS added), after `prompts`
  int64_t max_new_tokens = 16;
  std::string dtype = "auto";
  std::string quantization = "none";  // none | int8 (with --model; --config uses [quantization])
  stage::SamplingParams sampling;     // the same seed for every prompt: each behaves as if alone
  bool logits = false;                // keep the logits at the last prompt position
  bool stop_at_eos = false;
  // Generate once untimed first (sequential mode): one-time costs such as CUDA graph
  // capture and lazy kernel loading stay out of the reported rates.
  bool warmup = false;
  int threads = 0;  // 0 = LibTorch's default
};

struct GenerateResult {
  std::vector<int64_t> prompt_ids;
  std::vector<int64_t> output_ids;
  std::vector<float> last_logits;  // [vocab] when GenerateOptions::logits
  bool has_text = false;           // the model has a tokenizer: text fields are filled
  std::string prompt_text, text;   // the prompt and the continuation, decoded
};

// Progress and timing go to `log`. Throws on bad input (a message naming the problem).
std::vector<GenerateResult> generate(const GenerateOptions& opts, std::ostream& log);

// This program's path (/proc/self/exe), for spawning stage processes.
std::string self_exe();

// "1,17,250" -> {1, 17, 250}; throws std::invalid_argument quoting the text.
std::vector<int64_t> parse_ids(const std::string& text);

// One JSON object per line: {"prompt_ids": [...], "output_ids": [...], "last_logits": [...]}.
void print_json(const std::vector<GenerateResult>& results, bool with_logits, std::ostream& out);

}  // namespace cascade::daemon
