// A checkpoint's chat template: found where transformers looks for it
// (chat_template.jinja beside the weights, else tokenizer_config.json's `chat_template`,
// a string or a list of named templates), rendered with a request's messages the way
// apply_chat_template renders them: `messages`, `tools`, `add_generation_prompt`, the
// special tokens of tokenizer_config.json (`bos_token`, `eos_token`, ...) and any extra
// keyword arguments the client sends (`chat_template_kwargs`).
//
// Immutable after load; render() may run on several threads at once.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "daemon/chat/jinja.h"

namespace cascade::chat {

class ChatTemplate {
 public:
  // The template of checkpoint directory `dir`, or nullopt when it ships none. Throws
  // TemplateError when the template or tokenizer_config.json does not parse.
  static std::optional<ChatTemplate> load(const std::string& dir);
  // A template from its source, with special tokens as tokenizer_config.json gives them.
  ChatTemplate(const std::string& source, Json special_tokens, std::string tool_source = {});

  // The prompt text for `messages` (an array of message objects) and `tools` (an array,
  // or null). `extra` (an object) adds variables; it cannot replace messages or tools.
  // Throws TemplateError (raised() when the template called raise_exception).
  std::string render(const Json& messages, const Json& tools, bool add_generation_prompt,
                     const Json& extra = Json::object()) const;

  // The end-of-turn markers this template writes (e.g. <|im_end|>, <|eot_id|>): the
  // daemon stops generation at each one that is a single token of the vocabulary.
  const std::vector<std::string>& end_of_turn() const { return end_of_turn_; }

 private:
  Template main_;
  std::optional<Template> tools_;  // a named "tool_use" template, used when tools are given
  Json special_;
  std::vector<std::string> end_of_turn_;
};

}  // namespace cascade::chat
