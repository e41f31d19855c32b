#include "daemon/chat/chat_template.h"

#include <fstream>
#include <sstream>

namespace cascade::chat {
namespace {

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The markers chat formats end a turn with; a template that writes one literally ends
// its assistant turns with it (the model's EOS is always a stop as well).
const char* const kEndOfTurn[] = {
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "<｜end▁of▁sentence｜>",
    "</s>"};

// tokenizer_config.json writes a special token as a string or as an AddedToken object.
Json special_tokens(const Json& config) {
  Json out = Json::object();
  for (auto it = config.begin(); it != config.end(); ++it) {
    const std::string& k = it.key();
    if (k.size() < 6 || k.compare(k.size() - 6, 6, "_token") != 0) continue;
    const Json& v = it.value();
    if (v.is_string())
      out[k] = v;
    else if (v.is_object() && v.contains("content") && v["content"].is_string())
      out[k] = v["content"];
  }
  return out;
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& source, Json special_tokens, std::string tool_source)
    : main_(source), special_(std::move(special_tokens)) {
  if (!tool_source.empty()) tools_.emplace(tool_source);
  for (const char* m : kEndOfTurn)
    if (source.find(m) != std::string::npos || tool_source.find(m) != std::string::npos) end_of_turn_.push_back(m);
}

std::optional<ChatTemplate> ChatTemplate::load(const std::string& dir) {
  Json config = Json::object();
  if (auto text = read_file(dir + "/tokenizer_config.json")) {
    try {
      config = Json::parse(*text);
    } catch (const Json::exception& e) {
      throw TemplateError(dir + "/tokenizer_config.json is not valid JSON: " + e.what());
    }
    if (!config.is_object()) throw TemplateError(dir + "/tokenizer_config.json is not a JSON object");
  }
  const Json special = special_tokens(config);
  if (auto jinja = read_file(dir + "/chat_template.jinja")) return ChatTemplate(*jinja, special);
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return std::nullopt;
  const Json& t = config["chat_template"];
  if (t.is_string()) return ChatTemplate(t.get<std::string>(), special);
  if (!t.is_array()) throw TemplateError(dir + "/tokenizer_config.json: chat_template must be a string or a list");
  // A list of {"name", "template"}: "default" is the template, "tool_use" the one for
  // requests with tools (as transformers picks them).
  std::string main, tool;
  for (const Json& e : t) {
    if (!e.is_object() || !e.contains("name") || !e.contains("template") || !e["name"].is_string() ||
        !e["template"].is_string())
      throw TemplateError(dir + "/tokenizer_config.json: chat_template entries need a name and a template");
    if (e["name"] == "default") main = e["template"].get<std::string>();
    if (e["name"] == "tool_use") tool = e["template"].get<std::string>();
  }
  if (main.empty()) throw TemplateError(dir + "/tokenizer_config.json: chat_template has no \"default\" entry");
  return ChatTemplate(main, special, tool);
}

std::string ChatTemplate::render(const Json& messages, const Json& tools, bool add_generation_prompt,
                                 const Json& extra) const {
  // As apply_chat_template: tools and documents are always defined (None when absent).
  Json ctx = special_;
  ctx["documents"] = nullptr;
  for (auto it = extra.begin(); it != extra.end(); ++it) ctx[it.key()] = it.value();
  ctx["messages"] = messages;
  ctx["tools"] = tools;
  ctx["add_generation_prompt"] = add_generation_prompt;
  const Template& t = tools_ && !tools.is_null() ? *tools_ : main_;
  return t.render(ctx);
}

}  // namespace cascade::chat
