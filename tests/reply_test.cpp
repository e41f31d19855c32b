#include "daemon/http/reply.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace cascade::daemon {
namespace {

using nlohmann::json;

ReplySetup setup(bool chat, bool stream, int64_t n) {
  ReplySetup s;
  s.request.prompt_ids = {1, 2};
  s.request.stream = stream;
  s.request.n = n;
  s.chat = chat;
  s.id = "x";
  s.model = "m";
  s.text_of = [](int64_t id) { return "t" + std::to_string(id); };
  return s;
}

CompletionResult done(int64_t index, std::string text, std::vector<int64_t> ids) {
  CompletionResult r;
  r.index = index;
  r.text = std::move(text);
  r.token_ids = std::move(ids);
  return r;
}

// "data: {...}\n\n" events of a stream, parsed; "[DONE]" as a string.
std::vector<json> events(const std::string& s) {
  std::vector<json> out;
  size_t at = 0;
  while ((at = s.find("data: ", at)) != std::string::npos) {
    const size_t end = s.find("\n\n", at);
    const std::string body = s.substr(at + 6, end - at - 6);
    out.push_back(body == "[DONE]" ? json("[DONE]") : json::parse(body));
    at = end;
  }
  return out;
}

TEST(Reply, ABodyWaitsForEveryChoiceAndListsThemByIndex) {
  Reply r(setup(false, false, 2));
  EXPECT_EQ(r.on_done(done(1, "b", {4, 5})), "");
  EXPECT_FALSE(r.complete());
  const json j = json::parse(r.on_done(done(0, "a", {3})));
  EXPECT_TRUE(r.complete());
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["text"], "a");
  EXPECT_EQ(j["choices"][1]["text"], "b");
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
}

TEST(Reply, AChatStreamGivesEachChoiceItsRoleAndFinishThenDone) {
  ReplySetup s = setup(true, true, 2);
  s.request.stream_usage = true;
  Reply r(s);
  Delta d;
  d.index = 1;
  d.text = "hi";
  auto e = events(r.on_tokens(d));
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0]["choices"][0]["index"], 1);
  EXPECT_EQ(e[0]["choices"][0]["delta"], json({{"role", "assistant"}, {"content", "hi"}}));
  d.text = "!";
  e = events(r.on_tokens(d));
  EXPECT_EQ(e[0]["choices"][0]["delta"], json({{"content", "!"}}));  // the role once
  e = events(r.on_done(done(1, "hi!", {7, 8})));
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0]["choices"][0]["finish_reason"], "length");
  // Choice 0 finishes without a delta of its own: its role still goes out first.
  e = events(r.on_done(done(0, "", {9})));
  ASSERT_EQ(e.size(), 4u);
  EXPECT_EQ(e[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(e[1]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(e[2]["usage"]["completion_tokens"], 3);
  EXPECT_EQ(e[3], "[DONE]");
  EXPECT_TRUE(r.complete());
}

TEST(Reply, EchoPutsThePromptBeforeEachChoicesFirstText) {
  ReplySetup s = setup(false, true, 1);
  s.request.echo = true;
  s.request.sampling.logprobs = 0;
  s.echo_text = "Once";
  Reply r(s);
  Delta d;
  d.text = " upon";
  d.logprobs = {stage::TokenScore{5, -1.0, {}}};
  d.prompt_logprobs = {stage::TokenScore{1, std::nan(""), {}}, stage::TokenScore{2, -3.0, {}}};
  auto e = events(r.on_tokens(d));
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0]["choices"][0]["text"], "Once upon");
  EXPECT_EQ(e[0]["choices"][0]["logprobs"]["tokens"], json({"t1", "t2", "t5"}));
  d.text = " a";
  d.logprobs = {stage::TokenScore{6, -2.0, {}}};
  d.prompt_logprobs.clear();
  e = events(r.on_tokens(d));
  EXPECT_EQ(e[0]["choices"][0]["text"], " a");
  EXPECT_EQ(e[0]["choices"][0]["logprobs"]["text_offset"], json({6}));  // after "t1t2t5"
  e = events(r.on_done(done(0, " upon a", {5, 6})));
  EXPECT_EQ(e.back(), "[DONE]");
}

}  // namespace
}  // namespace cascade::daemon
