// From a /v1/chat/completions request to the token prompt the scheduler runs: the
// model's chat template rendered with the messages (daemon/chat/chat_template.h), then
// tokenized without adding special tokens a second time (the template wrote them), with
// the template's end-of-turn tokens as stops beside EOS.
//
// ChatSetup is built once at start and read by every connection (immutable after load).
#pragma once

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "daemon/chat/chat_template.h"
#include "daemon/http/api.h"
#include "daemon/tokenizer/tokenizer.h"

namespace cascade::daemon {

struct ChatSetup {
  std::optional<chat::ChatTemplate> tmpl;
  std::string missing;                   // why there is no template (for the 400), when none
  std::vector<int64_t> end_of_turn_ids;  // the template's end-of-turn markers that are one token

  // The checkpoint's template; a template that does not parse is logged, and chat
  // requests then get a 400 naming the problem (completions still work).
  static ChatSetup load(const std::string& model_dir, const Tokenizer* tok, std::ostream& log);
};

// The request to schedule; throws ApiError(400) for a model without a template, a
// template error (raise_exception's message as is), or a prompt over the limits.
CompletionRequest chat_prompt(const ChatRequest& r, const ChatSetup& s, const Tokenizer& tok, const Limits& l);

}  // namespace cascade::daemon
