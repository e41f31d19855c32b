#include "daemon/http/api.h"

#include <cmath>

#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

void expect_400(const std::string& body, const std::string& part, const std::string& param = "") {
  try {
    parse_completion(body);
    ADD_FAILURE() << "accepted: " << body;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    if (!param.empty()) {
      EXPECT_EQ(e.param, param);
    }
  }
}

// Inputs that once aborted the daemon (issue 19): a number outside a double's range in
// any field, and bytes that are not UTF-8 echoed into an error message.
TEST(Api, HostileBodiesBecome400sWithValidUtf8Messages) {
  expect_400(R"({"prompt": "hi", "unknown": 1e999})", "not valid JSON");
  expect_400(R"({"prompt": "hi", "max_tokens": -1e400})", "not valid JSON");
  for (const std::string& body : {std::string("{\"prompt\": tru\xff\xfe}"), std::string("{\"pro\xc3\x28mpt\": 1}"),
                                  std::string("\xff\xfe\xfd"), std::string("{\"prompt\": \"a\xed\xa0\x80\"}")}) {
    try {
      parse_completion(body);
      ADD_FAILURE() << "accepted a body with invalid bytes";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      const std::string out = error_json(e.status, e.what(), e.param);
      const auto j = nlohmann::json::parse(out);  // valid JSON, hence valid UTF-8
      EXPECT_EQ(j["error"]["code"], 400);
      EXPECT_EQ(out.find('\xff'), std::string::npos) << out;
    }
  }
  // Whatever a message holds, the error body is valid UTF-8 JSON.
  const std::string echoed = error_json(404, "no such endpoint: /v1/\xff\xc3");
  EXPECT_NO_THROW(nlohmann::json::parse(echoed)) << echoed;
  EXPECT_EQ(echoed.find('\xff'), std::string::npos);
}

TEST(Api, ParsesEveryField) {
  const auto r = parse_completion(R"({"prompt": [1, 2, 3], "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
      "top_k": 40, "seed": 12, "stop": ["\n\n", "END"], "stream": true, "return_token_ids": true, "ignore_eos": true,
      "user": "ignored", "model": "whatever"})");
  EXPECT_FALSE(r.text_prompt);
  EXPECT_EQ(r.prompt_ids, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_DOUBLE_EQ(r.sampling.temperature, 0.5);
  EXPECT_DOUBLE_EQ(r.sampling.top_p, 0.9);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_EQ(r.sampling.seed, 12u);
  EXPECT_TRUE(r.seeded && r.stream && r.return_token_ids && r.ignore_eos);
  EXPECT_EQ(r.stop.size(), 2u);
  const auto d = parse_completion(R"({"prompt": "hi", "stop": "x", "top_k": -1})");
  EXPECT_TRUE(d.text_prompt);
  EXPECT_EQ(d.max_tokens, 16);
  EXPECT_DOUBLE_EQ(d.sampling.temperature, 1.0);  // OpenAI's default
  EXPECT_EQ(d.sampling.top_k, 0);
  EXPECT_FALSE(d.seeded);
  EXPECT_EQ(d.n, 1);
  EXPECT_EQ(d.sampling.logprobs, -1);
  const auto o = parse_completion(R"({"prompt": "hi", "n": 3, "echo": true, "logprobs": 2, "presence_penalty": 0.5,
      "frequency_penalty": -1.5, "repetition_penalty": 1.1, "min_p": 0.05, "logit_bias": {"50256": -100, "7": 2.5}})");
  EXPECT_EQ(o.n, 3);
  EXPECT_TRUE(o.echo);
  EXPECT_EQ(o.sampling.logprobs, 2);
  EXPECT_TRUE(o.sampling.prompt_logprobs);
  EXPECT_DOUBLE_EQ(o.sampling.presence_penalty, 0.5);
  EXPECT_DOUBLE_EQ(o.sampling.frequency_penalty, -1.5);
  EXPECT_DOUBLE_EQ(o.sampling.repetition_penalty, 1.1);
  EXPECT_DOUBLE_EQ(o.sampling.min_p, 0.05);
  EXPECT_EQ(o.sampling.logit_bias, (std::vector<std::pair<int64_t, float>>{{50256, -100.0f}, {7, 2.5f}}));
  EXPECT_FALSE(parse_completion(R"({"prompt": "hi", "echo": true})").sampling.prompt_logprobs);
}

TEST(Api, RejectsWhatItCannotHonour) {
  expect_400("{", "not valid JSON");
  expect_400("[1]", "must be a JSON object");
  expect_400(std::string("{\"prompt\": \"a\xff\"}"), "not valid UTF-8");
  expect_400("{}", "'prompt' is required", "prompt");
  expect_400(R"({"prompt": 5})", "'prompt' must be a string or an array", "prompt");
  expect_400(R"({"prompt": [1, "a"]})", "token ids", "prompt");
  expect_400(R"({"prompt": [[1], [2]]})", "batched prompts");
  expect_400(R"({"prompt": ""})", "empty");
  expect_400(R"({"prompt": "a", "max_tokens": "8"})", "'max_tokens' must be an integer", "max_tokens");
  expect_400(R"({"prompt": "a", "max_tokens": 0})", "'max_tokens' must be in", "max_tokens");
  expect_400(R"({"prompt": "a", "temperature": 3})", "'temperature' must be in", "temperature");
  expect_400(R"({"prompt": "a", "top_p": 0})", "'top_p'");
  expect_400(R"({"prompt": "a", "stream": "yes"})", "'stream' must be true or false");
  expect_400(R"({"prompt": "a", "stop": ["", "x"]})", "must not be empty");
  expect_400(R"({"prompt": "a", "stop": ["a","b","c","d","e"]})", "at most 4");
  expect_400(R"({"prompt": "a", "n": 0})", "'n' must be in", "n");
  expect_400(R"({"prompt": "a", "best_of": 2})", "only best_of = 1", "best_of");
  expect_400(R"({"prompt": "a", "logprobs": 21})", "'logprobs' must be in [0, 20]", "logprobs");
  expect_400(R"({"prompt": "a", "logprobs": true})", "'logprobs' must be an integer", "logprobs");
  expect_400(R"({"prompt": "a", "echo": 1})", "'echo' must be true or false", "echo");
  expect_400(R"({"prompt": "a", "presence_penalty": 2.5})", "'presence_penalty' must be in", "presence_penalty");
  expect_400(R"({"prompt": "a", "frequency_penalty": -3})", "'frequency_penalty' must be in", "frequency_penalty");
  expect_400(R"({"prompt": "a", "repetition_penalty": 0})", "'repetition_penalty' must be > 0", "repetition_penalty");
  expect_400(R"({"prompt": "a", "min_p": 1.5})", "'min_p' must be in", "min_p");
  expect_400(R"({"prompt": "a", "logit_bias": [1]})", "'logit_bias' must be an object", "logit_bias");
  expect_400(R"({"prompt": "a", "logit_bias": {"x1": 1}})", "keys must be token ids, got \"x1\"", "logit_bias");
  expect_400(R"({"prompt": "a", "logit_bias": {"-1": 1}})", "keys must be token ids", "logit_bias");
  expect_400(R"({"prompt": "a", "logit_bias": {"1": 101}})", "values must be numbers in [-100, 100]", "logit_bias");
  expect_400(R"({"prompt": "a", "logit_bias": {"1": "x"}})", "values must be numbers", "logit_bias");
  expect_400(R"({"prompt": "a", "seed": 1.5})", "'seed' must be an integer");
}

TEST(Api, Limits) {
  CompletionRequest r;
  r.prompt_ids = {1, 2, 300};
  r.max_tokens = 8;
  const Limits l{256, 16, 64, 4};
  EXPECT_THROW_WITH(check_limits(r, l), ApiError, "token id 300 is out of range [0, 256)");
  r.prompt_ids = std::vector<int64_t>(16, 1);
  EXPECT_THROW_WITH(check_limits(r, l), ApiError, "16 tokens; max_seq_len is 16");
  r.prompt_ids = {1};
  r.max_tokens = 65;
  EXPECT_THROW_WITH(check_limits(r, l), ApiError, "over this server's cap of 64");
  r.max_tokens = 64;
  check_limits(r, l);
  r.n = 5;
  EXPECT_THROW_WITH(check_limits(r, l), ApiError, "'n' is 5", "at most 4 sequences");
  r.n = 4;
  r.sampling.logit_bias = {{256, 1.0f}};
  EXPECT_THROW_WITH(check_limits(r, l), ApiError, "logit_bias token 256 is out of range [0, 256)");
  r.sampling.logit_bias = {{255, 1.0f}};
  check_limits(r, l);
  // An encoder-decoder model: its decoder start token takes a position, and nothing
  // scores a prompt its encoder reads.
  const Limits seq2seq{256, 16, 64, 4, true};
  r.prompt_ids = std::vector<int64_t>(14, 1);
  check_limits(r, seq2seq);
  r.prompt_ids.push_back(1);
  EXPECT_THROW_WITH(check_limits(r, seq2seq), ApiError, "15 tokens; max_seq_len is 16");
  check_limits(r, l);
  r.prompt_ids = {1};
  r.sampling.prompt_logprobs = true;
  check_limits(r, l);
  EXPECT_THROW_WITH(check_limits(r, seq2seq), ApiError, "'echo' with 'logprobs'", "encoder-decoder");
}

std::string text_of(int64_t id) { return id == 6 ? "\xc3\xa9" : "t" + std::to_string(id); }

stage::TokenScore score(int64_t token, double lp, std::vector<std::pair<int64_t, double>> top = {}) {
  stage::TokenScore s;
  s.token = token;
  s.logprob = lp;
  s.top = std::move(top);
  return s;
}

TEST(Api, ResponseShapes) {
  CompletionRequest req;
  req.prompt_ids = {1, 2};
  req.return_token_ids = true;
  CompletionResult res;
  res.text = "hello";
  res.token_ids = {5, 6, 7};
  res.finish = Finish::kStop;
  const auto j = nlohmann::json::parse(completion_json("cmpl-1", 100, "demo", req, {res}, "", text_of));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "hello");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["choices"][0]["token_ids"], nlohmann::json({5, 6, 7}));
  EXPECT_EQ(j["prompt_token_ids"], nlohmann::json({1, 2}));
  EXPECT_EQ(j["usage"]["total_tokens"], 5);
  Delta d;
  d.text = "hi";
  d.ids = {5};
  req.return_token_ids = false;
  const std::string ev = chunk_event("cmpl-1", 100, "demo", req, d, nullptr, text_of);
  ASSERT_EQ(ev.rfind("data: ", 0), 0u);
  ASSERT_EQ(ev.substr(ev.size() - 2), "\n\n");
  const auto c = nlohmann::json::parse(ev.substr(6));
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(c["choices"][0].contains("token_ids"));
  const auto e = nlohmann::json::parse(error_json(429, "busy"));
  EXPECT_EQ(e["error"]["type"], "rate_limit_error");
  EXPECT_EQ(e["error"]["message"], "busy");
}

// logprobs in OpenAI's two shapes, n choices, echo, and usage summed over choices.
TEST(Api, LogprobsChoicesAndEcho) {
  CompletionRequest req;
  req.prompt_ids = {1, 2};
  req.n = 2;
  req.echo = true;
  req.sampling.logprobs = 1;
  std::vector<CompletionResult> rs(2);
  rs[0].index = 0;
  rs[0].text = "a";
  rs[0].token_ids = {6};
  rs[0].prompt_logprobs = {score(1, std::nan("")), score(2, -0.5, {{3, -0.25}})};
  rs[0].logprobs = {score(6, -1.0, {{6, -1.0}})};
  rs[1].index = 1;
  rs[1].text = "bc";
  rs[1].token_ids = {8, 9};
  rs[1].logprobs = {score(8, -2.0, {{4, -0.1}}), score(9, -0.3, {{9, -0.3}})};
  const auto j = nlohmann::json::parse(completion_json("c", 1, "m", req, rs, "PROMPT", text_of));
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["text"], "PROMPTa");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  const auto& lp = j["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], nlohmann::json({"t1", "t2", "\u00e9"}));
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_EQ(lp["token_logprobs"][1], -0.5);
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_EQ(lp["top_logprobs"][1], nlohmann::json({{"t3", -0.25}, {"t2", -0.5}}));  // the chosen one too
  EXPECT_EQ(lp["text_offset"], nlohmann::json({0, 2, 4}));                          // code points
  EXPECT_EQ(j["choices"][1]["logprobs"]["top_logprobs"][0], nlohmann::json({{"t4", -0.1}, {"t8", -2.0}}));
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
  EXPECT_EQ(j["usage"]["total_tokens"], 5);

  const auto chat = nlohmann::json::parse(chat_completion_json("c", 1, "m", req, rs, text_of));
  const auto& content = chat["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 1u);  // chat has no echo: generated tokens only
  EXPECT_EQ(content[0]["token"], "\u00e9");
  EXPECT_EQ(content[0]["bytes"], nlohmann::json({0xc3, 0xa9}));
  EXPECT_EQ(content[0]["logprob"], -1.0);
  EXPECT_EQ(content[0]["top_logprobs"][0]["token"], "\u00e9");
  EXPECT_EQ(chat["choices"][1]["logprobs"]["content"][1]["top_logprobs"][0]["logprob"], -0.3);
}

// /v1/chat/completions: the messages as the template will see them, and every
// malformed message a 400 that names it.
TEST(Api, ChatRequests) {
  const ChatRequest r = parse_chat(R"({"messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null,
       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "42"}],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "max_completion_tokens": 7, "temperature": 0, "stream": true, "stop": "END",
    "chat_template_kwargs": {"enable_thinking": false, "messages": "ignored"}})");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1]["content"], "Hello\nthere");
  EXPECT_TRUE(r.messages[2]["content"].is_null());
  EXPECT_EQ(r.messages[2]["tool_calls"][0]["function"]["arguments"], nlohmann::json({{"x", 1}}));
  EXPECT_EQ(r.messages[3]["tool_call_id"], "c1");
  EXPECT_EQ(r.tools.size(), 1u);
  EXPECT_EQ(r.options.max_tokens, 7);
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_TRUE(r.options.stream);
  EXPECT_EQ(r.options.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(r.template_kwargs, nlohmann::json({{"enable_thinking", false}}));
  EXPECT_FALSE(parse_chat(R"({"messages": [{"role": "user", "content": "x"}]})").max_tokens_given);

  auto rejects = [](const std::string& body, const std::string& part) {
    try {
      parse_chat(body);
      ADD_FAILURE() << "accepted: " << body;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  rejects(R"({})", "'messages' is required");
  rejects(R"({"messages": []})", "non-empty array");
  rejects(R"({"messages": [{"content": "x"}]})", "messages[0] needs a 'role'");
  rejects(R"({"messages": [{"role": "user", "content": "x"}, {"role": "wizard", "content": "x"}]})",
          "messages[1]: role 'wizard'");
  rejects(R"({"messages": [{"role": "user"}]})", "messages[0] needs 'content'");
  rejects(R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
          "only text content parts");
  rejects(R"({"messages": [{"role": "user", "content": 5}]})", "'content' must be a string");
  rejects(R"({"messages": [{"role": "user", "content": "x"}], "tools": {}})", "'tools' must be an array");
  rejects(R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "needs 'logprobs': true");
  rejects(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})", "'logprobs' must be true or false");
  rejects(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})",
          "'top_logprobs' must be in");
  EXPECT_EQ(
      parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})").options.sampling.logprobs, 0);
  EXPECT_EQ(parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 3})")
                .options.sampling.logprobs,
            3);
  rejects(R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0})", "max_completion_tokens");
}

TEST(Api, ChatResponseShapes) {
  CompletionRequest req;
  req.prompt_ids = {1, 2, 3};
  CompletionResult res;
  res.text = "hi";
  res.token_ids = {5, 6};
  res.finish = Finish::kStop;
  const auto j = nlohmann::json::parse(chat_completion_json("chatcmpl-1", 100, "demo", req, {res}, text_of));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"], nlohmann::json({{"role", "assistant"}, {"content", "hi"}}));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
  Delta d;
  d.text = "he";
  const std::string first = chat_chunk_event("chatcmpl-1", 100, "demo", req, true, d, nullptr, text_of);
  const auto c = nlohmann::json::parse(first.substr(6));
  EXPECT_EQ(c["object"], "chat.completion.chunk");
  EXPECT_EQ(c["choices"][0]["delta"], nlohmann::json({{"role", "assistant"}, {"content", "he"}}));
  const Finish f = Finish::kLength;
  const auto last =
      nlohmann::json::parse(chat_chunk_event("chatcmpl-1", 100, "demo", req, false, Delta{}, &f, text_of).substr(6));
  EXPECT_EQ(last["choices"][0]["delta"], nlohmann::json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
}

}  // namespace
}  // namespace cascade::daemon
