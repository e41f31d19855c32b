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
  if (present(j, "n")) r.n = integer(j, "n", 1, 1 << 20);
  if (present(j, "best_of") && integer(j, "best_of", 1, 1 << 20) != 1) bad("best_of", "only best_of = 1 is supported");
  auto& p = r.sampling;
  if (present(j, "presence_penalty")) p.presence_penalty = number(j, "presence_penalty", -2.0, 2.0);
  if (present(j, "frequency_penalty")) p.frequency_penalty = number(j, "frequency_penalty", -2.0, 2.0);
  if (present(j, "repetition_penalty")) {
    p.repetition_penalty = number(j, "repetition_penalty", 0.0, 1e6);
    if (p.repetition_penalty <= 0) bad("repetition_penalty", "'repetition_penalty' must be > 0");
  }
  if (present(j, "min_p")) p.min_p = number(j, "min_p", 0.0, 1.0);
  if (present(j, "logit_bias")) {
    const json& b = j.at("logit_bias");
    if (!b.is_object()) bad("logit_bias", std::string("'logit_bias' must be an object, got ") + type_of(b));
    if (b.size() > 1024) bad("logit_bias", "'logit_bias' takes at most 1024 tokens");
    for (const auto& [key, value] : b.items()) {
      const bool digits = !key.empty() && key.size() <= 12 &&
                          std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
      const int64_t token = digits ? std::stoll(key) : -1;
      if (token < 0) bad("logit_bias", "'logit_bias' keys must be token ids, got \"" + key + "\"");
      if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < -100 ||
          value.get<double>() > 100)
        bad("logit_bias", "'logit_bias' values must be numbers in [-100, 100]");
      p.logit_bias.emplace_back(token, value.get<float>());
    }
  }
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
  if (present(j, "echo")) r.echo = boolean(j, "echo");
  if (present(j, "logprobs")) r.sampling.logprobs = static_cast<int32_t>(integer(j, "logprobs", 0, 20));
  r.sampling.prompt_logprobs = r.echo && r.sampling.logprobs >= 0;
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
  const bool logprobs = present(j, "logprobs") && boolean(j, "logprobs");
  if (present(j, "top_logprobs")) {
    const int64_t top = integer(j, "top_logprobs", 0, 20);
    if (!logprobs) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r.options.sampling.logprobs = static_cast<int32_t>(top);
  } else if (logprobs) {
    r.options.sampling.logprobs = 0;
  }
  return r;
}

void check_limits(const CompletionRequest& r, const Limits& l) {
  for (int64_t id : r.prompt_ids) {
    if (id < 0 || id >= l.vocab_size)
      bad("prompt", "token id " + std::to_string(id) + " is out of range [0, " + std::to_string(l.vocab_size) + ")");
  }
  for (const auto& [id, bias] : r.sampling.logit_bias) {
    if (id >= l.vocab_size)
      bad("logit_bias",
          "logit_bias token " + std::to_string(id) + " is out of range [0, " + std::to_string(l.vocab_size) + ")");
  }
  if (l.max_n > 0 && r.n > l.max_n)
    bad("n", "'n' is " + std::to_string(r.n) + ", but this server runs at most " + std::to_string(l.max_n) +
                 " sequences at once (runtime.max_batch)");
  if (r.max_tokens > l.max_tokens)
    bad("max_tokens", "'max_tokens' is " + std::to_string(r.max_tokens) + ", over this server's cap of " +
                          std::to_string(l.max_tokens));
  if (l.encoder_decoder && r.sampling.prompt_logprobs)
    bad("echo",
        "'echo' with 'logprobs' scores the prompt, but this is an encoder-decoder model: its encoder reads the "
        "prompt and nothing scores it");
  // An encoder-decoder model's decoder start token takes a position too.
  const int64_t n = static_cast<int64_t>(r.prompt_ids.size());
  if (n + (l.encoder_decoder ? 1 : 0) + 1 > l.max_seq_len)
    bad("prompt", "the prompt has " + std::to_string(n) + " tokens; max_seq_len is " + std::to_string(l.max_seq_len) +
                      ", which leaves no room to generate");
}

const char* to_string(Finish f) { return f == Finish::kStop ? "stop" : "length"; }

int64_t code_points(const std::string& s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

namespace {

json usage_json(const CompletionRequest& req, const std::vector<CompletionResult>& results) {
  size_t completion = 0;
  for (const auto& r : results) completion += r.token_ids.size();
  return {{"prompt_tokens", req.prompt_ids.size()},
          {"completion_tokens", completion},
          {"total_tokens", req.prompt_ids.size() + completion}};
}

json logprob_value(double lp) { return std::isnan(lp) ? json(nullptr) : json(lp); }

// Completions' shape: parallel arrays, top_logprobs as {token text: logprob} with the
// chosen token included (so up to logprobs + 1 entries), text_offset in code points.
json completion_logprobs(const std::vector<stage::TokenScore>& scores, int64_t offset, const TokenText& text_of) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (const auto& sc : scores) {
    const std::string t = text_of(sc.token);
    tokens.push_back(t);
    lps.push_back(logprob_value(sc.logprob));
    offsets.push_back(offset);
    offset += code_points(t);
    if (std::isnan(sc.logprob)) {
      tops.push_back(nullptr);
      continue;
    }
    json top = json::object();
    for (const auto& [id, lp] : sc.top) top[text_of(id)] = lp;
    top[t] = sc.logprob;
    tops.push_back(top);
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json token_entry(const std::string& t, double lp) {
  json bytes = json::array();
  for (char c : t) bytes.push_back(static_cast<unsigned char>(c));
  return {{"token", t}, {"logprob", logprob_value(lp)}, {"bytes", bytes}};
}

// Chat's shape: one object per token with its bytes and its top alternatives.
json chat_logprobs(const std::vector<stage::TokenScore>& scores, const TokenText& text_of) {
  json content = json::array();
  for (const auto& sc : scores) {
    json e = token_entry(text_of(sc.token), sc.logprob);
    json top = json::array();
    for (const auto& [id, lp] : sc.top) top.push_back(token_entry(text_of(id), lp));
    e["top_logprobs"] = top;
    content.push_back(e);
  }
  return {{"content", content}, {"refusal", nullptr}};
}

std::vector<stage::TokenScore> joined(const std::vector<stage::TokenScore>& a,
                                      const std::vector<stage::TokenScore>& b) {
  std::vector<stage::TokenScore> v = a;
  v.insert(v.end(), b.begin(), b.end());
  return v;
}

json envelope(const std::string& id, const char* object, int64_t created, const std::string& model, json choices) {
  return {{"id", id}, {"object", object}, {"created", created}, {"model", model}, {"choices", std::move(choices)}};
}

}  // namespace

std::string completion_json(const std::string& id, int64_t created, const std::string& model,
                            const CompletionRequest& req, const std::vector<CompletionResult>& results,
                            const std::string& echo_text, const TokenText& text_of) {
  json choices = json::array();
  for (const auto& r : results) {
    json choice = {{"text", req.echo ? echo_text + r.text : r.text},
                   {"index", r.index},
                   {"logprobs", nullptr},
                   {"finish_reason", to_string(r.finish)}};
    if (req.sampling.logprobs >= 0)
      choice["logprobs"] = completion_logprobs(joined(r.prompt_logprobs, r.logprobs), 0, text_of);
    if (req.return_token_ids) choice["token_ids"] = r.token_ids;
    choices.push_back(choice);
  }
  json j = envelope(id, "text_completion", created, model, choices);
  j["usage"] = usage_json(req, results);
  if (req.return_token_ids) j["prompt_token_ids"] = req.prompt_ids;
  return to_json_text(j);
}

std::string chunk_event(const std::string& id, int64_t created, const std::string& model, const CompletionRequest& req,
                        const Delta& d, const Finish* finish, const TokenText& text_of) {
  json choice = {{"text", d.text}, {"index", d.index}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (finish) choice["finish_reason"] = to_string(*finish);
  if (req.sampling.logprobs >= 0 && !finish)
    choice["logprobs"] = completion_logprobs(joined(d.prompt_logprobs, d.logprobs), d.text_offset, text_of);
  if (req.return_token_ids && !finish) choice["token_ids"] = d.ids;
  // Invalid UTF-8 can only come from a token cut mid-character; the decoder holds those back.
  return "data: " + to_json_text(envelope(id, "text_completion", created, model, json::array({choice}))) + "\n\n";
}

std::string chat_completion_json(const std::string& id, int64_t created, const std::string& model,
                                 const CompletionRequest& req, const std::vector<CompletionResult>& results,
                                 const TokenText& text_of) {
  json choices = json::array();
  for (const auto& r : results) {
    json choice = {{"index", r.index},
                   {"message", {{"role", "assistant"}, {"content", r.text}}},
                   {"logprobs", nullptr},
                   {"finish_reason", to_string(r.finish)}};
    if (req.sampling.logprobs >= 0) choice["logprobs"] = chat_logprobs(r.logprobs, text_of);
    choices.push_back(choice);
  }
  json j = envelope(id, "chat.completion", created, model, choices);
  j["usage"] = usage_json(req, results);
  return to_json_text(j);
}

std::string chat_chunk_event(const std::string& id, int64_t created, const std::string& model,
                             const CompletionRequest& req, bool first, const Delta& d, const Finish* finish,
                             const TokenText& text_of) {
  json delta = json::object();
  if (first) delta["role"] = "assistant";
  if (!finish) delta["content"] = d.text;
  json choice = {{"index", d.index}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (finish) choice["finish_reason"] = to_string(*finish);
  if (req.sampling.logprobs >= 0 && !finish) choice["logprobs"] = chat_logprobs(d.logprobs, text_of);
  return "data: " + to_json_text(envelope(id, "chat.completion.chunk", created, model, json::array({choice}))) + "\n\n";
}

std::string usage_event(const std::string& id, int64_t created, const std::string& model, bool chat,
                        const CompletionRequest& req, const std::vector<CompletionResult>& results) {
  json j = envelope(id, chat ? "chat.completion.chunk" : "text_completion", created, model, json::array());
  j["usage"] = usage_json(req, results);
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
