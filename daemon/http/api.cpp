#include "daemon/http/api.h"

#include <algorithm>
#include <cmath>
#include <iterator>

namespace cascade::daemon {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

const char* type_of(const json& v) { return v.type_name(); }

int64_t integer(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json& v = j.at(key);
  if (!v.is_number_integer()) bad(key, std::string("'") + key + "' must be an integer, got " + type_of(v));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    bad(key, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                 std::to_string(x));
  return x;
}

double number(const json& j, const char* key, double lo, double hi) {
  const json& v = j.at(key);
  if (!v.is_number()) bad(key, std::string("'") + key + "' must be a number, got " + type_of(v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(key, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

bool boolean(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_boolean()) bad(key, std::string("'") + key + "' must be true or false, got " + type_of(v));
  return v.get<bool>();
}

bool present(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

}  // namespace

std::string error_json(int status, const std::string& message, const std::string& param, const std::string& type) {
  std::string t = type;
  if (t.empty()) {
    t = status == 401   ? "authentication_error"
        : status == 404 ? "not_found_error"
        : status == 429 ? "rate_limit_error"
        : status >= 500 ? "server_error"
                        : "invalid_request_error";
  }
  json e = {{"message", message}, {"type", t}, {"param", nullptr}, {"code", status}};
  if (!param.empty()) e["param"] = param;
  return to_json_text(json({{"error", e}}));
}

std::string to_json_text(const nlohmann::json& j) {
  // Bytes that are not UTF-8 (from a client, echoed in a message) become U+FFFD rather
  // than an exception: an error response must never fail to serialise.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

json parse_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    if (what.find("UTF-8") != std::string::npos || what.find("utf-8") != std::string::npos)
      bad("", "the request body is not valid UTF-8");
    // nlohmann quotes the bytes it read last: keep the position, not the client's bytes.
    what = what.substr(0, what.find("; last read"));
    bad("", "the request body is not valid JSON (byte " + std::to_string(e.byte) + "): " + what);
  } catch (const json::exception& e) {  // e.g. a number outside the range of a double
    bad("", std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) bad("", std::string("the request body must be a JSON object, got ") + type_of(j));
  return j;
}

// The generation options both endpoints take.
void parse_options(const json& j, CompletionRequest& r) {
  if (present(j, "max_tokens")) r.max_tokens = integer(j, "max_tokens", 1, int64_t{1} << 40);
  if (present(j, "temperature"))
    r.sampling.temperature = number(j, "temperature", 0.0, 2.0);
  else
    r.sampling.temperature = 1.0;
  if (present(j, "top_p")) r.sampling.top_p = number(j, "top_p", 1e-9, 1.0);
  if (present(j, "top_k")) {
    const int64_t k = integer(j, "top_k", -1, int64_t{1} << 31);
    r.sampling.top_k = k < 0 ? 0 : k;  // vLLM spells "off" as -1
  }
  if (present(j, "seed")) {
    const json& v = j.at("seed");
    if (!v.is_number_integer()) bad("seed", std::string("'seed' must be an integer, got ") + type_of(v));
    r.sampling.seed = v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
    r.seeded = true;
  }
  if (present(j, "stop")) {
    const json& s = j.at("stop");
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      for (const auto& x : s) {
        if (!x.is_string()) bad("stop", "'stop' must be a string or an array of strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", std::string("'stop' must be a string or an array of strings, got ") + type_of(s));
    }
    if (r.stop.size() > 4) bad("stop", "'stop' takes at most 4 sequences");
    for (const auto& x : r.stop)
      if (x.empty()) bad("stop", "'stop' sequences must not be empty");
  }
  if (present(j, "stream")) r.stream = boolean(j, "stream");
  if (present(j, "stream_options")) {
    const json& o = j.at("stream_options");
    if (!o.is_object()) bad("stream_options", "'stream_options' must be an object");
    if (present(o, "include_usage")) r.stream_usage = boolean(o, "include_usage");
  }
  if (present(j, "return_token_ids")) r.return_token_ids = boolean(j, "return_token_ids");
  if (present(j, "ignore_eos")) r.ignore_eos = boolean(j, "ignore_eos");
  if (present(j, "n") && integer(j, "n", 1, 1 << 20) != 1) bad("n", "only n = 1 is supported");
  if (present(j, "best_of") && integer(j, "best_of", 1, 1 << 20) != 1) bad("best_of", "only best_of = 1 is supported");
}

}  // namespace

CompletionRequest parse_completion(const std::string& body) {
  const json j = parse_body(body);
  CompletionRequest r;
  if (!present(j, "prompt")) bad("prompt", "'prompt' is required");
  const json& p = j.at("prompt");
  if (p.is_string()) {
    r.text_prompt = true;
    r.prompt_text = p.get<std::string>();
    if (r.prompt_text.empty()) bad("prompt", "'prompt' is empty");
  } else if (p.is_array() && !p.empty() && p.front().is_array()) {
    bad("prompt", "batched prompts (a list of prompts) are not supported: send one request per prompt");
  } else if (p.is_array()) {
    if (p.empty()) bad("prompt", "'prompt' is empty");
    for (const auto& t : p) {
      if (!t.is_number_integer()) bad("prompt", "'prompt' must be a string or an array of token ids (integers)");
      r.prompt_ids.push_back(t.get<int64_t>());
    }
  } else {
    bad("prompt", std::string("'prompt' must be a string or an array of token ids, got ") + type_of(p));
  }
  parse_options(j, r);
  if (present(j, "echo") && boolean(j, "echo")) bad("echo", "'echo' is not supported");
  if (present(j, "logprobs")) bad("logprobs", "'logprobs' is not supported");
  return r;
}

namespace {

// One message as the template sees it: content parts of text joined into a string, a
// tool call's JSON-string arguments parsed into an object (as transformers passes them).
json chat_message(const json& m, size_t i) {
  const std::string at = "messages[" + std::to_string(i) + "]";
  if (!m.is_object()) bad("messages", at + " must be an object, got " + type_of(m));
  if (!m.contains("role") || !m["role"].is_string()) bad("messages", at + " needs a 'role' string");
  static const char* const roles[] = {"system", "developer", "user", "assistant", "tool"};
  const std::string role = m["role"].get<std::string>();
  if (std::find(std::begin(roles), std::end(roles), role) == std::end(roles))
    bad("messages", at + ": role '" + role + "' is not one of system, developer, user, assistant, tool");
  json out = m;
  const bool calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
  if (!m.contains("content") || m["content"].is_null()) {
    if (!(role == "assistant" && calls)) bad("messages", at + " needs 'content'");
    out["content"] = nullptr;
  } else if (m["content"].is_array()) {
    std::string text;
    for (const json& part : m["content"]) {
      if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
          !part["text"].is_string())
        bad("messages", at + ": only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
      text += (text.empty() ? "" : "\n") + part["text"].get<std::string>();
    }
    out["content"] = text;
  } else if (!m["content"].is_string()) {
    bad("messages", at + ": 'content' must be a string, an array of text parts or null");
  }
  if (calls) {
    if (!m["tool_calls"].is_array()) bad("messages", at + ": 'tool_calls' must be an array");
    for (json& c : out["tool_calls"]) {
      if (!c.is_object() || !c.contains("function") || !c["function"].is_object() || !c["function"].contains("name") ||
          !c["function"]["name"].is_string())
        bad("messages", at + ": each tool call needs a function with a name");
      json& args = c["function"]["arguments"];
      if (args.is_string()) {
        json parsed = json::parse(args.get<std::string>(), nullptr, /*allow_exceptions=*/false);
        if (parsed.is_object()) args = std::move(parsed);
      }
    }
  }
  return out;
}

}  // namespace

ChatRequest parse_chat(const std::string& body) {
  const json j = parse_body(body);
  ChatRequest r;
  if (!present(j, "messages")) bad("messages", "'messages' is required");
  const json& m = j.at("messages");
  if (!m.is_array() || m.empty()) bad("messages", "'messages' must be a non-empty array");
  r.messages = json::array();
  for (size_t i = 0; i < m.size(); ++i) r.messages.push_back(chat_message(m[i], i));
  if (present(j, "tools")) {
    const json& t = j.at("tools");
    if (!t.is_array()) bad("tools", std::string("'tools' must be an array, got ") + type_of(t));
    for (const json& tool : t)
      if (!tool.is_object()) bad("tools", "each tool must be an object");
    if (!t.empty()) r.tools = t;
  }
  if (present(j, "chat_template_kwargs")) {
    r.template_kwargs = j.at("chat_template_kwargs");
    if (!r.template_kwargs.is_object()) bad("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    for (const char* k : {"messages", "tools", "add_generation_prompt"}) r.template_kwargs.erase(k);
  }
  if (present(j, "add_generation_prompt")) r.add_generation_prompt = boolean(j, "add_generation_prompt");
  parse_options(j, r.options);
  if (present(j, "max_completion_tokens"))
    r.options.max_tokens = integer(j, "max_completion_tokens", 1, int64_t{1} << 40);
  r.max_tokens_given = present(j, "max_tokens") || present(j, "max_completion_tokens");
  if (present(j, "logprobs") && boolean(j, "logprobs")) bad("logprobs", "'logprobs' is not supported yet");
  return r;
}

void check_limits(const CompletionRequest& r, const Limits& l) {
  for (int64_t id : r.prompt_ids) {
    if (id < 0 || id >= l.vocab_size)
      bad("prompt", "token id " + std::to_string(id) + " is out of range [0, " + std::to_string(l.vocab_size) + ")");
  }
  if (r.max_tokens > l.max_tokens)
    bad("max_tokens", "'max_tokens' is " + std::to_string(r.max_tokens) + ", over this server's cap of " +
                          std::to_string(l.max_tokens));
  const int64_t n = static_cast<int64_t>(r.prompt_ids.size());
  if (n + 1 > l.max_seq_len)
    bad("prompt", "the prompt has " + std::to_string(n) + " tokens; max_seq_len is " + std::to_string(l.max_seq_len) +
                      ", which leaves no room to generate");
}

const char* to_string(Finish f) { return f == Finish::kStop ? "stop" : "length"; }

namespace {

json usage_json(const CompletionRequest& req, const CompletionResult& res) {
  return {{"prompt_tokens", req.prompt_ids.size()},
          {"completion_tokens", res.token_ids.size()},
          {"total_tokens", req.prompt_ids.size() + res.token_ids.size()}};
}

}  // namespace

std::string completion_json(const std::string& id, int64_t created, const std::string& model,
                            const CompletionRequest& req, const CompletionResult& res) {
  json choice = {{"text", res.text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", to_string(res.finish)}};
  if (req.return_token_ids) choice["token_ids"] = res.token_ids;
  json j = {{"id", id},       {"object", "text_completion"},      {"created", created},
            {"model", model}, {"choices", json::array({choice})}, {"usage", usage_json(req, res)}};
  if (req.return_token_ids) j["prompt_token_ids"] = req.prompt_ids;
  return to_json_text(j);
}

std::string chunk_event(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                        const std::vector<int64_t>& token_ids, const Finish* finish, bool with_ids) {
  json choice = {{"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (finish) choice["finish_reason"] = to_string(*finish);
  if (with_ids) choice["token_ids"] = token_ids;
  const json j = {{"id", id},
                  {"object", "text_completion"},
                  {"created", created},
                  {"model", model},
                  {"choices", json::array({choice})}};
  // Invalid UTF-8 can only come from a token cut mid-character; the decoder holds those back.
  return "data: " + to_json_text(j) + "\n\n";
}

std::string chat_completion_json(const std::string& id, int64_t created, const std::string& model,
                                 const CompletionRequest& req, const CompletionResult& res) {
  json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", res.text}}},
                 {"logprobs", nullptr},
                 {"finish_reason", to_string(res.finish)}};
  const json j = {{"id", id},       {"object", "chat.completion"},      {"created", created},
                  {"model", model}, {"choices", json::array({choice})}, {"usage", usage_json(req, res)}};
  return to_json_text(j);
}

std::string chat_chunk_event(const std::string& id, int64_t created, const std::string& model, bool first,
                             const std::string& text, const Finish* finish) {
  json delta = json::object();
  if (first) delta["role"] = "assistant";
  if (!finish) delta["content"] = text;
  json choice = {{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (finish) choice["finish_reason"] = to_string(*finish);
  const json j = {{"id", id},
                  {"object", "chat.completion.chunk"},
                  {"created", created},
                  {"model", model},
                  {"choices", json::array({choice})}};
  return "data: " + to_json_text(j) + "\n\n";
}

std::string usage_event(const std::string& id, int64_t created, const std::string& model, bool chat,
                        const CompletionRequest& req, const CompletionResult& res) {
  const json j = {{"id", id},
                  {"object", chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created},
                  {"model", model},
                  {"choices", json::array()},
                  {"usage", usage_json(req, res)}};
  return "data: " + to_json_text(j) + "\n\n";
}

TokenizeRequest parse_tokenize(const std::string& body) {
  const json j = parse_body(body);
  if (!present(j, "prompt") || !j.at("prompt").is_string()) bad("prompt", "'prompt' must be a string");
  TokenizeRequest r;
  r.text = j.at("prompt").get<std::string>();
  if (present(j, "add_special_tokens")) r.add_special_tokens = boolean(j, "add_special_tokens");
  return r;
}

std::vector<int64_t> parse_detokenize(const std::string& body) {
  const json j = parse_body(body);
  if (!present(j, "tokens") || !j.at("tokens").is_array()) bad("tokens", "'tokens' must be an array of token ids");
  std::vector<int64_t> ids;
  for (const json& t : j.at("tokens")) {
    if (!t.is_number_integer()) bad("tokens", "'tokens' must be an array of token ids (integers)");
    ids.push_back(t.get<int64_t>());
  }
  return ids;
}

}  // namespace cascade::daemon
