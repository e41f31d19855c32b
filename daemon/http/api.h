// The OpenAI-compatible surface of `cascade serve` (DESIGN §8): parsing and checking
// /v1/completions and /v1/chat/completions requests, and shaping responses, stream
// chunks and errors.
//
// Unknown request fields are ignored, as OpenAI's own server and vLLM do, so existing
// clients work; fields Cascade cannot honour (n > 1, echo, logprobs, best_of > 1) are
// rejected with a 400 that names them. Plain functions; no state.
#pragma once

#include <cstdint>
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
  stage::SamplingParams sampling;   // temperature 1, top_p 1, top_k off by default
  bool seeded = false;              // a seed was given (else the server draws one)
  std::vector<std::string> stop;    // up to 4, non-empty
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
  int64_t max_tokens = 0;  // the server's cap on max_tokens
};
// Throws ApiError(400) for token ids out of range, a prompt that leaves no room in
// max_seq_len, or max_tokens over the cap.
void check_limits(const CompletionRequest& r, const Limits& l);

enum class Finish { kLength, kStop };
const char* to_string(Finish f);

struct CompletionResult {
  std::string text;
  std::vector<int64_t> token_ids;
  Finish finish = Finish::kLength;
};

std::string completion_json(const std::string& id, int64_t created, const std::string& model,
                            const CompletionRequest& req, const CompletionResult& res);
// chat.completion and its stream's chat.completion.chunk events: the first chunk
// carries the role, the last the finish reason.
std::string chat_completion_json(const std::string& id, int64_t created, const std::string& model,
                                 const CompletionRequest& req, const CompletionResult& res);
std::string chat_chunk_event(const std::string& id, int64_t created, const std::string& model, bool first,
                             const std::string& text, const Finish* finish);

// The stream's usage chunk (stream_options.include_usage): no choices, the token counts.
std::string usage_event(const std::string& id, int64_t created, const std::string& model, bool chat,
                        const CompletionRequest& req, const CompletionResult& res);

// /tokenize and /detokenize bodies (vLLM's shapes): text, or token ids.
struct TokenizeRequest {
  std::string text;
  bool add_special_tokens = true;
};
TokenizeRequest parse_tokenize(const std::string& body);         // {"prompt": "...", "add_special_tokens"?}
std::vector<int64_t> parse_detokenize(const std::string& body);  // {"tokens": [...]}

// One SSE "data: {...}\n\n" event; finish is set on the last chunk only.
std::string chunk_event(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                        const std::vector<int64_t>& token_ids, const Finish* finish, bool with_ids);

}  // namespace cascade::daemon
