#include "daemon/http/chat_prompt.h"

#include <algorithm>

namespace cascade::daemon {

ChatSetup ChatSetup::load(const std::string& model_dir, const Tokenizer* tok, std::ostream& log) {
  ChatSetup s;
  try {
    s.tmpl = chat::ChatTemplate::load(model_dir);
    if (!s.tmpl)
      s.missing =
          "this model has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja): use "
          "/v1/completions";
  } catch (const chat::TemplateError& e) {
    s.missing = std::string("this model's chat template cannot be used: ") + e.what();
    log << "cascade: warning: " << s.missing << " (/v1/chat/completions will answer 400)" << std::endl;
  }
  if (s.tmpl && tok) {
    for (const std::string& m : s.tmpl->end_of_turn()) {
      const std::vector<int64_t> ids = tok->encode(m, /*add_special_tokens=*/false);
      if (ids.size() == 1) s.end_of_turn_ids.push_back(ids[0]);
    }
  }
  return s;
}

CompletionRequest chat_prompt(const ChatRequest& r, const ChatSetup& s, const Tokenizer& tok, const Limits& l) {
  if (!s.tmpl) throw ApiError(400, s.missing, "messages");
  std::string prompt;
  try {
    prompt = s.tmpl->render(r.messages, r.tools, r.add_generation_prompt, r.template_kwargs);
  } catch (const chat::TemplateError& e) {
    // raise_exception's message is the template's own words to the client.
    throw ApiError(400, e.raised() ? e.what() : std::string("the chat template failed: ") + e.what(), "messages");
  }
  CompletionRequest q = r.options;
  q.prompt_ids = tok.encode(prompt, /*add_special_tokens=*/false);
  if (q.prompt_ids.empty()) throw ApiError(400, "the chat template rendered an empty prompt", "messages");
  q.stop_token_ids = s.end_of_turn_ids;
  if (!r.max_tokens_given)  // OpenAI's chat default: until the context ends (within the server's cap)
    q.max_tokens = std::max<int64_t>(
        1, std::min<int64_t>(l.max_tokens, l.max_seq_len - static_cast<int64_t>(q.prompt_ids.size())));
  check_limits(q, l);
  return q;
}

}  // namespace cascade::daemon
