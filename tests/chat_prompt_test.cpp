// A chat request to the prompt the scheduler runs, with the demo model's tokenizer: the
// rendered template tokenized without special tokens added again, end-of-turn stops,
// the default max_tokens, and the 400s.
#include "daemon/http/chat_prompt.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

std::string demo() { return std::string(CASCADE_SOURCE_DIR) + "/models/demo"; }

class ChatPrompt : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_symlink(demo() + "/tokenizer.json", dir_.file("tokenizer.json"));
    tok_ = Tokenizer::load(dir_.path());
  }
  ChatSetup setup(const std::string& tmpl) {
    test::write_file(dir_.file("tokenizer_config.json"),
                     nlohmann::json({{"eos_token", "<|endoftext|>"}, {"chat_template", tmpl}}).dump());
    std::ostringstream log;
    return ChatSetup::load(dir_.path(), tok_.get(), log);
  }
  test::TempDir dir_;
  std::shared_ptr<const Tokenizer> tok_;
  Limits limits_{4096, 64, 32};
};

TEST_F(ChatPrompt, RendersTokenizesAndStopsAtTheEndOfTurn) {
  const ChatSetup s = setup("{% for m in messages %}{{ m.role }}: {{ m.content }}<|endoftext|>{% endfor %}assistant:");
  const ChatRequest r = parse_chat(R"({"messages": [{"role": "user", "content": "Once upon a time"}]})");
  const CompletionRequest q = chat_prompt(r, s, *tok_, limits_);
  EXPECT_EQ(q.prompt_ids, tok_->encode("user: Once upon a time<|endoftext|>assistant:", false));
  EXPECT_EQ(q.stop_token_ids, tok_->encode("<|endoftext|>", false));
  EXPECT_EQ(q.max_tokens, std::min<int64_t>(32, 64 - static_cast<int64_t>(q.prompt_ids.size())));
  const ChatRequest capped = parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5})");
  EXPECT_EQ(chat_prompt(capped, s, *tok_, limits_).max_tokens, 5);
}

TEST_F(ChatPrompt, TemplateProblemsAre400s) {
  auto status_and_message = [&](const ChatSetup& s, const std::string& body) {
    try {
      chat_prompt(parse_chat(body), s, *tok_, limits_);
    } catch (const ApiError& e) {
      return std::to_string(e.status) + " " + e.what();
    }
    return std::string("no error");
  };
  const std::string one = R"({"messages": [{"role": "user", "content": "hi"}]})";
  std::ostringstream log;
  EXPECT_NE(
      status_and_message(ChatSetup::load(demo(), tok_.get(), log), one).find("400 this model has no chat template"),
      std::string::npos);
  EXPECT_EQ(status_and_message(setup("{{ raise_exception('Roles must alternate') }}"), one),
            "400 Roles must alternate");
  EXPECT_NE(status_and_message(setup("{{ messages[0].content + 1 }}"), one).find("400 the chat template failed"),
            std::string::npos);
  const ChatSetup broken = setup("{% if %}");
  EXPECT_NE(broken.missing.find("cannot be used"), std::string::npos);
  EXPECT_NE(status_and_message(broken, one).find("400"), std::string::npos);
  EXPECT_NE(status_and_message(setup("{% for i in range(200) %}word {% endfor %}"), one).find("max_seq_len"),
            std::string::npos);
}

}  // namespace
}  // namespace cascade::daemon
