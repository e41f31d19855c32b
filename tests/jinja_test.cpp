// The Jinja interpreter (daemon/chat/jinja.h) and the chat template around it
// (chat_template.h) against Python's jinja2 set up as
// transformers sets it up: every template in tests/data/chat/templates with every
// conversation in cases.json must give jinja2's text exactly (expected.json, written
// by scripts/make_chat_fixtures.py), raise the same raise_exception message, or fail
// where jinja2 fails. Then the errors and limits untrusted templates need.
#include "daemon/chat/jinja.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "daemon/chat/chat_template.h"
#include "tests/test_util.h"

namespace cascade::chat {
namespace {

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string render(const std::string& src, const Json& ctx = Json::object()) { return Template(src).render(ctx); }

TEST(Jinja, RendersEveryTemplateAsJinja2Does) {
  const std::string dir = test::fixture("chat");
  const Json cases = Json::parse(read(dir + "/cases.json"));
  const Json expected = Json::parse(read(dir + "/expected.json"));
  int texts = 0, raised = 0, failed = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/templates")) {
    const std::string name = e.path().filename().string();
    const std::string source = read(e.path().string());
    for (const Json& c : cases) {
      const std::string key = name + "/" + c["name"].get<std::string>();
      ASSERT_TRUE(expected.contains(key)) << key << ": rerun scripts/make_chat_fixtures.py";
      const Json& want = expected[key];
      // The case's context split as the daemon splits a request: special tokens, the
      // messages, tools, add_generation_prompt, and the rest as extra variables.
      Json special = Json::object(), extra = c["context"];
      for (const char* k : {"bos_token", "eos_token"}) {
        if (extra.contains(k)) special[k] = extra[k];
        extra.erase(k);
      }
      const Json messages = extra["messages"], tools = extra.contains("tools") ? extra["tools"] : Json();
      const bool gen = extra.value("add_generation_prompt", false);
      for (const char* k : {"messages", "tools", "add_generation_prompt"}) extra.erase(k);
      try {
        const std::string got = ChatTemplate(source, special).render(messages, tools, gen, extra);
        EXPECT_TRUE(want.contains("text")) << key << ": jinja2 failed, we rendered\n" << got;
        if (want.contains("text")) {
          EXPECT_EQ(got, want["text"].get<std::string>()) << key;
          ++texts;
        }
      } catch (const TemplateError& err) {
        if (want.contains("raised")) {
          EXPECT_TRUE(err.raised()) << key << ": " << err.what();
          EXPECT_EQ(std::string(err.what()), want["raised"].get<std::string>()) << key;
          ++raised;
        } else {
          EXPECT_TRUE(want.contains("error")) << key << ": we failed where jinja2 rendered: " << err.what();
          EXPECT_FALSE(err.raised()) << key;
          ++failed;
        }
      }
    }
  }
  EXPECT_GE(texts, 80);
  std::printf("[ jinja ] %d texts identical to jinja2, %d raise_exception messages, %d failures where jinja2 fails\n",
              texts, raised, failed);
}

TEST(Jinja, WhitespaceControlMatchesTransformersSettings) {
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indent before it.
  EXPECT_EQ(render("{% if true %}\n  a\n  {% endif %}\nb"), "  a\nb");
  EXPECT_EQ(render("x  {{- ' y ' -}}  z"), "x y z");
  EXPECT_EQ(render("  {#- c -#}  k"), "k");
  EXPECT_EQ(render("a\n  {%+ if true %}b{% endif %}"), "a\n  b");
  EXPECT_EQ(render("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
}

TEST(Jinja, ErrorsNameTheLineAndTheProblem) {
  auto message = [](const std::string& src, const Json& ctx = Json::object()) {
    try {
      render(src, ctx);
    } catch (const TemplateError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("a\n{% if x %}").find("line 2"), std::string::npos);
  EXPECT_NE(message("{{ x + }}").find("unexpected end"), std::string::npos);
  EXPECT_NE(message("{% frobnicate %}").find("unsupported statement 'frobnicate'"), std::string::npos);
  EXPECT_NE(message("{{ x | nosuch }}").find("unknown filter 'nosuch'"), std::string::npos);
  EXPECT_NE(message("{{ a.b }}").find("'a' is undefined"), std::string::npos);
  EXPECT_NE(message("{{ 1 / 0 }}").find("division by zero"), std::string::npos);
  EXPECT_NE(message("{{ 'a' + 1 }}").find("unsupported operand"), std::string::npos);
  EXPECT_NE(message("{{ x.append(1) }}", {{"x", Json::array()}}).find("may not change a list"), std::string::npos);
  EXPECT_NE(message("{{ 'unterminated }}").find("unterminated string"), std::string::npos);
  try {
    render("{{ raise_exception('Only user and assistant roles') }}");
    FAIL() << "no exception";
  } catch (const TemplateError& e) {
    EXPECT_TRUE(e.raised());
    EXPECT_STREQ(e.what(), "Only user and assistant roles");
  }
}

TEST(Jinja, HostileTemplatesAreBounded) {
  auto fails_with = [](const std::string& src, const std::string& what) {
    try {
      render(src);
    } catch (const TemplateError& e) {
      return std::string(e.what()).find(what) != std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(
      fails_with("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "runs too long"));
  EXPECT_TRUE(fails_with("{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}", "16 MiB"));
  EXPECT_TRUE(fails_with("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nest too deep"));
  EXPECT_TRUE(fails_with("{{ range(10000000) }}", "too long"));
  EXPECT_TRUE(fails_with("{{ 'ab' * 100000000 }}", "string too long"));
  EXPECT_EQ(render("{{ '' * 100000000000 }}|{{ [1, 2] * 2 }}"), "|[1, 2, 1, 2]");
}

// Each operator level is left-associative, `**` included, and binds as jinja2's parser
// does (`~` between `+ -` and `* / // %`): the values are jinja2's.
TEST(Jinja, ArithmeticGroupsAsJinja2Does) {
  EXPECT_EQ(render("{{ 10 - 3 - 2 }}|{{ 2 ** 3 ** 2 }}|{{ 7 // 2 * 3 % 4 }}|{{ 20 / 4 / 5 }}"), "5|64|1|1.0");
  EXPECT_EQ(render("{{ 1 + 2 * 3 - 4 }}|{{ -2 ** 2 }}|{{ 'a' ~ 2 * 3 ~ 'b' }}"), "3|4|a6b");
  EXPECT_THROW(render("{{ 'a' ~ 1 - 1 }}"), std::exception);  // ('a' ~ 1) - 1, as in jinja2
}

TEST(Jinja, LoopsScopesAndNamespaces) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(render("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = i %}{% endfor %}{{ ns.x }}"), "2");
  EXPECT_EQ(render("{% for i in [1, 2, 3, 4] if i is even %}{{ loop.index }}:{{ i }} {% endfor %}"), "1:2 2:4 ");
  EXPECT_EQ(render("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }},{% endfor %}"), "3,7,");
  EXPECT_EQ(render("{% for i in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"), "012");
}

}  // namespace
}  // namespace cascade::chat
