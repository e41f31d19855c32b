// Finding and rendering a checkpoint's chat template as transformers does: the places it
// may live, the forms it takes, the special tokens beside it, and clear errors.
#include "daemon/chat/chat_template.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace cascade::chat {
namespace {

const Json kUser = Json::array({{{"role", "user"}, {"content", "hi"}}});

TEST(ChatTemplate, NoneShippedIsNotAnError) {
  test::TempDir dir;
  EXPECT_FALSE(ChatTemplate::load(dir.path()).has_value());
  test::write_file(dir.file("tokenizer_config.json"), R"({"eos_token": "</s>", "chat_template": null})");
  EXPECT_FALSE(ChatTemplate::load(dir.path()).has_value());
}

TEST(ChatTemplate, AStringWithSpecialTokensInBothForms) {
  test::TempDir dir;
  test::write_file(dir.file("tokenizer_config.json"), R"({
    "bos_token": {"content": "<s>", "lstrip": false, "__type": "AddedToken"}, "eos_token": "</s>",
    "model_max_length": 4096,
    "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}{{ tools is none }}{{ documents is none }}{% if add_generation_prompt %}[assistant]{% endif %}"})");
  const auto t = ChatTemplate::load(dir.path());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->render(kUser, Json(), true), "<s>[user] hi</s>TrueTrue[assistant]");
  EXPECT_EQ(t->render(kUser, Json(), false), "<s>[user] hi</s>TrueTrue");
  EXPECT_EQ(t->end_of_turn(), std::vector<std::string>{});  // writes eos_token, not a literal marker
}

TEST(ChatTemplate, NamedTemplatesPickToolUseWhenToolsAreGiven) {
  test::TempDir dir;
  test::write_file(dir.file("tokenizer_config.json"), R"({"chat_template": [
    {"name": "default", "template": "plain {{ messages | length }}<|im_end|>"},
    {"name": "tool_use", "template": "tools {{ tools | map(attribute='name') | join(',') }}"}]})");
  const auto t = ChatTemplate::load(dir.path());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->render(kUser, Json(), true), "plain 1<|im_end|>");
  EXPECT_EQ(t->render(kUser, Json::array({{{"name", "f"}}, {{"name", "g"}}}), true), "tools f,g");
  EXPECT_EQ(t->end_of_turn(), std::vector<std::string>{"<|im_end|>"});
}

TEST(ChatTemplate, TheJinjaFileWinsAndExtraVariablesReachTheTemplate) {
  test::TempDir dir;
  test::write_file(dir.file("tokenizer_config.json"), R"({"chat_template": "from the config"})");
  test::write_file(dir.file("chat_template.jinja"),
                   "from the file{% if enable_thinking is false %} (no thinking){% endif %}");
  const auto t = ChatTemplate::load(dir.path());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->render(kUser, Json(), true, {{"enable_thinking", false}}), "from the file (no thinking)");
}

TEST(ChatTemplate, BrokenFilesAreErrorsThatSayWhere) {
  test::TempDir dir;
  auto error_of = [&](const std::string& config) {
    test::write_file(dir.file("tokenizer_config.json"), config);
    try {
      ChatTemplate::load(dir.path());
    } catch (const TemplateError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of("{not json").find("tokenizer_config.json is not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(R"({"chat_template": 7})").find("must be a string or a list"), std::string::npos);
  EXPECT_NE(error_of(R"({"chat_template": [{"name": "tool_use", "template": "x"}]})").find("no \"default\""),
            std::string::npos);
  EXPECT_NE(error_of(R"({"chat_template": "{% for m in messages %}"})").find("missing 'endfor'"), std::string::npos);
}

}  // namespace
}  // namespace cascade::chat
