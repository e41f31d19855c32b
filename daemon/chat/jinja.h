// A Jinja2 interpreter for the chat templates Hugging Face checkpoints ship
// (tokenizer_config.json `chat_template`, chat_template.jinja). It renders as
// transformers' apply_chat_template does: Jinja2's ImmutableSandboxedEnvironment with
// trim_blocks and lstrip_blocks, the loop-controls extension (break, continue), `tojson`
// as json.dumps(ensure_ascii=False), and the globals raise_exception and strftime_now.
//
// The subset is what chat templates use: output, if/elif/else, for (with loop.*, an
// inline `if`, else, tuple targets), set (also `set ns.x` on a namespace, and block
// set), macro, filter blocks, generation blocks, raw; the full expression grammar with
// Python semantics for values (str(), repr(), truthiness, slicing, string and dict
// methods); the filters and tests Jinja2 provides that templates call. Anything else is
// a TemplateError naming it, never undefined behaviour: templates come from checkpoints
// and requests are untrusted.
//
// Template is immutable after parse and may be rendered from several threads at once.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace cascade::chat {

using Json = nlohmann::ordered_json;

// A template that does not parse or fails while rendering. `raised()` is true when the
// template itself called raise_exception(message): what() is then that message alone,
// for the client (a 400); otherwise what() says where and why.
class TemplateError : public std::runtime_error {
 public:
  explicit TemplateError(const std::string& what, bool raised = false) : std::runtime_error(what), raised_(raised) {}
  bool raised() const { return raised_; }

 private:
  bool raised_;
};

namespace jinja {
struct Node;
}

class Template {
 public:
  // Parses `source`; throws TemplateError naming the line of the first problem.
  explicit Template(const std::string& source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the top-level variables of `context` (an object). Throws TemplateError.
  std::string render(const Json& context) const;

 private:
  std::shared_ptr<const jinja::Node> root_;
};

}  // namespace cascade::chat
