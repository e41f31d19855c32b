// libFuzzer: chat templates (they come with checkpoints, so they are untrusted). Whatever
// the bytes, parsing and rendering a conversation with them ends in text or a
// TemplateError, within the interpreter's limits, never another exception or a crash.
#include "daemon/chat/jinja.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const chat::Json context = chat::Json::parse(R"({
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ✓"},
                 {"role": "assistant", "content": null,
                  "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": [1, 2.5]}}}]},
                 {"role": "tool", "content": "42"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>", "documents": null})");
  const std::string source(reinterpret_cast<const char*>(data), size);
  try {
    const chat::Template t(source);
    const std::string out = t.render(context);
    if (out.size() > (16u << 20)) fuzz::broken("output past the 16 MiB limit", source);
  } catch (const chat::TemplateError&) {
  }
  return 0;
}
