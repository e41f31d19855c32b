// The OpenAI-compatible surface of `cascade serve` (DESIGN §8): parsing and checking
// /v1/completions and /v1/chat/completions requests, and shaping responses, stream
// chunks and errors.
//
// Unknown request fields are ignored, as OpenAI's own server and vLLM do, so existing
// clients work; fields Cascade cannot honour (best_of > 1, batched prompts, content
// parts other than text) are rejected with a 400 that names them. Plain functions; no
// state.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "stage/sampler.h"

namespace cascade::daemon {

// An error answered to one client: HTTP status plus OpenAI's error object.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = "", std::string type = "")
      : std::runtime_error(message), status(status), param(std::move(param)), type(std::move(type)) {}
  int status;
  std::string param, type;
};

// j as JSON text; never throws: bytes that are not valid UTF-8 become U+FFFD.
std::string to_json_text(const nlohmann::json& j);

// {"error": {"message", "type", "param", "code"}}; type defaults by status. Valid
// UTF-8 whatever `message` holds.
std::string error_json(int status, const std::string& message, const std::string& param = "",
                       const std::string& type = "");

struct CompletionRequest {
  bool text_prompt = false;
  std::string prompt_text;          // when text_prompt
  std::vector<int64_t> prompt_ids;  // otherwise (or after tokenizing)
  int64_t max_tokens = 16;          // OpenAI's default
  // temperature 1, top_p 1, the rest off by default; logprobs: completions' integer, or
  // chat's top_logprobs when chat's logprobs is true; prompt_logprobs = echo && logprobs.
  stage::SamplingParams sampling;
  bool seeded = false;            // a seed was given (else the server draws one); choice i uses seed + i
  int64_t n = 1;                  // choices, sharing the prompt's prefill
  bool echo = false;              // completions: the prompt comes back before each choice's text
  std::vector<std::string> stop;  // up to 4, non-empty
  bool stream = false;
  bool return_token_ids = false;
  bool stream_usage = false;            // stream_options.include_usage: a usage chunk before [DONE]
  bool ignore_eos = false;              // vLLM's extension: generate max_tokens even past EOS
  std::vector<int64_t> stop_token_ids;  // end a sequence like EOS (a chat format's end of turn)
};

// Parses the body; throws ApiError(400) naming the field for malformed JSON, invalid
// UTF-8, wrong types and out-of-range values.
CompletionRequest parse_completion(const std::string& body);

// A /v1/chat/completions request: the conversation as the chat template will see it
// (text content as strings, tool-call arguments as objects, as transformers passes
// them) and the generation options it shares with /v1/completions; `options.prompt_ids`
// is filled in once the template is rendered and tokenized.
struct ChatRequest {
  nlohmann::json messages;                                    // array of message objects
  nlohmann::json tools;                                       // array, or null
  nlohmann::json template_kwargs = nlohmann::json::object();  // chat_template_kwargs
  bool add_generation_prompt = true;
  bool max_tokens_given = false;  // else: up to the end of the context
  CompletionRequest options;
};
// Parses and checks the body; throws ApiError(400) naming the field.
ChatRequest parse_chat(const std::string& body);

// What the model and server allow; checked after the prompt is tokenized.
struct Limits {
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  int64_t max_tokens = 0;        // the server's cap on max_tokens
  int64_t max_n = 0;             // sequences the server runs at once (KV slots)
  bool encoder_decoder = false;  // the prompt is an encoder's input (T5): no prompt logprobs
};
// Throws ApiError(400) for token ids out of range (prompt, logit_bias), a prompt that
// leaves no room in max_seq_len, max_tokens over the cap, n over the KV slots, or
// prompt logprobs (echo with logprobs) from an encoder-decoder model.
void check_limits(const CompletionRequest& r, const Limits& l);

enum class Finish { kLength, kStop };
const char* to_string(Finish f);

// One choice's outcome. logprobs has one entry per token_ids entry when logprobs were
// asked for; prompt_logprobs one per prompt token when echo was too (the first NaN).
struct CompletionResult {
  int64_t index = 0;  // choice
  std::string text;
  std::vector<int64_t> token_ids;
  std::vector<stage::TokenScore> logprobs, prompt_logprobs;
  Finish finish = Finish::kLength;
};

// What one choice adds to a stream: new text, the ids and logprobs behind it, and in
// its first delta (echo) the prompt's text and logprobs.
struct Delta {
  int64_t index = 0;
  int64_t text_offset = 0;  // code points of the choice's token texts before this delta (completions)
  std::string text;
  std::vector<int64_t> ids;
  std::vector<stage::TokenScore> logprobs, prompt_logprobs;
};

// A token's text in logprobs ("token_id:N" where there is no tokenizer).
using TokenText = std::function<std::string(int64_t)>;
// Unicode code points in UTF-8 text (a stray continuation byte counts as none).
int64_t code_points(const std::string& s);

// The response bodies; `results` hold every choice, by index. echo_text: the prompt
// as echoed (completions with echo).
std::string completion_json(const std::string& id, int64_t created, const std::string& model,
                            const CompletionRequest& req, const std::vector<CompletionResult>& results,
                            const std::string& echo_text, const TokenText& text_of);
std::string chat_completion_json(const std::string& id, int64_t created, const std::string& model,
                                 const CompletionRequest& req, const std::vector<CompletionResult>& results,
                                 const TokenText& text_of);
// One SSE "data: {...}\n\n" event for a choice; finish is set on its last chunk only.
std::string chunk_event(const std::string& id, int64_t created, const std::string& model, const CompletionRequest& req,
                        const Delta& d, const Finish* finish, const TokenText& text_of);
// chat.completion.chunk: a choice's first chunk carries the role, its last the finish reason.
std::string chat_chunk_event(const std::string& id, int64_t created, const std::string& model,
                             const CompletionRequest& req, bool first, const Delta& d, const Finish* finish,
                             const TokenText& text_of);

// The stream's usage chunk (stream_options.include_usage): no choices, the token counts.
std::string usage_event(const std::string& id, int64_t created, const std::string& model, bool chat,
                        const CompletionRequest& req, const std::vector<CompletionResult>& results);

// /tokenize and /detokenize bodies (vLLM's shapes): text, or token ids.
struct TokenizeRequest {
  std::string text;
  bool add_special_tokens = true;
};
TokenizeRequest parse_tokenize(const std::string& body);         // {"prompt": "...", "add_special_tokens"?}
std::vector<int64_t> parse_detokenize(const std::string& body);  // {"tokens": [...]}

}  // namespace cascade::daemon
