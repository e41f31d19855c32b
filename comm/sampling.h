// How a sequence chooses its tokens: the options a request gives, carried to the stage
// that holds the LM head in every step that may sample (comm/message.h) and applied by
// stage::Sampler. Plain values; defaults are "off" (greedy, no penalties, no logprobs).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace cascade::comm {

struct SamplingParams {
  double temperature = 0.0;  // <= 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  double min_p = 0.0;        // 0: off; else keep tokens with probability >= min_p * the top one's
  // OpenAI's penalties, over the tokens generated so far: each token's logit loses
  // presence_penalty once if it was generated and frequency_penalty per time it was.
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  // HF's (CTRL) penalty, over the prompt and the generated tokens: a positive logit is
  // divided by it, a negative one multiplied. 1: off.
  double repetition_penalty = 1.0;
  std::vector<std::pair<int64_t, float>> logit_bias;  // (token, added to its logit)
  // -1: no logprobs; else the chosen token's log-probability and the `logprobs` most
  // likely tokens' (0 = the chosen token's only).
  int32_t logprobs = -1;
  bool prompt_logprobs = false;  // also the log-probability of every prompt token (echo)
  uint64_t seed = 0;

  bool greedy() const { return temperature <= 0.0; }
  // Whether the sampler needs the prompt's token ids (comm::StepHeader::ids).
  bool needs_prompt() const { return repetition_penalty != 1.0 || prompt_logprobs; }
  bool operator==(const SamplingParams& o) const {
    return temperature == o.temperature && top_k == o.top_k && top_p == o.top_p && min_p == o.min_p &&
           presence_penalty == o.presence_penalty && frequency_penalty == o.frequency_penalty &&
           repetition_penalty == o.repetition_penalty && logit_bias == o.logit_bias && logprobs == o.logprobs &&
           prompt_logprobs == o.prompt_logprobs && seed == o.seed;
  }
};

}  // namespace cascade::comm
