// `cascade generate` as a user runs it: the real binary, real fixture directories,
// JSON on stdout compared with the Hugging Face reference.
#include "daemon/generate.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <sstream>

#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

using test::CliRun;
using test::run_cascade;

TEST(ParseIds, AcceptsListsRejectsGarbage) {
  EXPECT_EQ(parse_ids("1,17,250"), (std::vector<int64_t>{1, 17, 250}));
  EXPECT_EQ(parse_ids("5"), (std::vector<int64_t>{5}));
  for (const char* bad : {"", "1,,2", "1,x", "-1", "1.5", "1,2,"}) {
    EXPECT_THROW(parse_ids(bad), std::invalid_argument) << bad;
  }
}

class GenerateCli : public ::testing::TestWithParam<std::string> {};

TEST_P(GenerateCli, JsonOutputReproducesTheReference) {
  const auto ref = test::read_json(test::fixture(GetParam()) + "/reference.json");
  const CliRun r =
      run_cascade("generate --model " + test::fixture(GetParam()) +
                  " --max-new-tokens 16 --dtype float32 --greedy --json --logits" + test::reference_prompt_args(ref));
  ASSERT_EQ(r.status, 0);
  test::expect_matches_reference(ref, r.out, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GenerateCli, ::testing::ValuesIn(test::all_fixtures()),
                         [](const auto& info) { return info.param; });
// Encoder-decoder (T5): the prompt ids are the encoder's input, the output the decoder's
// tokens after its start token, the logits those that chose the first of them.
INSTANTIATE_TEST_SUITE_P(Seq2Seq, GenerateCli, ::testing::ValuesIn(test::seq2seq_fixtures()),
                         [](const auto& info) { return info.param; });

TEST(Generate, SameSeedSameTokensAndBatchInvariant) {
  GenerateOptions g;
  g.model_dir = test::fixture("qwen2_tied");
  g.prompts = {{3, 1, 4, 1, 5}};
  g.max_new_tokens = 12;
  g.sampling.temperature = 1.0;
  g.sampling.top_p = 0.9;
  g.sampling.seed = 1234;
  std::ostringstream log;
  const auto alone = generate(g, log);
  EXPECT_EQ(generate(g, log)[0].output_ids, alone[0].output_ids);
  g.prompts = {{9, 9}, {3, 1, 4, 1, 5}, {7}};  // the same prompt among others
  EXPECT_EQ(generate(g, log)[1].output_ids, alone[0].output_ids);
  g.sampling.seed = 99;
  g.prompts = {{3, 1, 4, 1, 5}};
  EXPECT_NE(generate(g, log)[0].output_ids, alone[0].output_ids);
  EXPECT_NE(log.str().find("tokens/s"), std::string::npos);
}

TEST(Generate, StopAtEos) {
  const auto ref = test::read_json(test::fixture("llama_gqa") + "/reference.json");
  const auto want = ref["prompts"][0]["output_ids"].get<std::vector<int64_t>>();
  test::TempDir dir;
  std::filesystem::copy(test::fixture("llama_gqa"), dir.file("m"), std::filesystem::copy_options::recursive);
  auto cfg = test::read_json(dir.file("m/config.json"));
  cfg["eos_token_id"] = want[3];  // the 4th greedy token becomes EOS
  test::write_file(dir.file("m/config.json"), cfg.dump());
  GenerateOptions g;
  g.model_dir = dir.file("m");
  g.prompts = {ref["prompts"][0]["prompt_ids"].get<std::vector<int64_t>>()};
  g.dtype = "float32";
  std::ostringstream log;
  EXPECT_EQ(generate(g, log)[0].output_ids.size(), 16u);  // greedy ignores EOS by default
  g.stop_at_eos = true;
  const auto out = generate(g, log)[0].output_ids;
  EXPECT_EQ(out, std::vector<int64_t>(want.begin(), want.begin() + 4));
}

TEST(Generate, WarmupRunsTwiceAndReportsTheSecond) {
  GenerateOptions g;
  g.model_dir = test::fixture("llama_gqa");
  g.prompts = {{1, 2, 3}, {4}};
  g.dtype = "float32";
  g.sampling.temperature = 0.8;  // sampled: the second run must restart each sequence's generator
  g.sampling.seed = 7;
  std::ostringstream plain_log, warm_log;
  const auto plain = generate(g, plain_log);
  g.warmup = true;
  const auto warm = generate(g, warm_log);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(plain[i].output_ids, warm[i].output_ids) << "prompt " << i;
  EXPECT_NE(warm_log.str().find("warm-up run done"), std::string::npos) << warm_log.str();
  EXPECT_EQ(plain_log.str().find("warm-up"), std::string::npos);
}

TEST(GenerateCliErrors, ClearMessagesAndNonZeroExit) {
  const std::string model = " --model " + test::fixture("llama_gqa");
  CliRun r = run_cascade("generate" + model + " --prompt-ids 1,999", true);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("token id 999 is out of range for vocab_size 256"), std::string::npos) << r.out;
  r = run_cascade("generate" + model + " --prompt-ids 1,x", true);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("invalid token id list '1,x'"), std::string::npos) << r.out;
  r = run_cascade("generate --model /nonexistent --prompt-ids 1", true);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("/nonexistent"), std::string::npos) << r.out;
  r = run_cascade("generate" + model + " --prompt-ids 1 --greedy --temperature 0.5", true);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("exclude each other"), std::string::npos) << r.out;
  r = run_cascade("generate" + model + " --prompt-ids 1 --dtype int4", true);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("int4"), std::string::npos) << r.out;
  r = run_cascade("generate" + model + " --prompt-ids 1 --top-p 0", true);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("top_p must be in (0, 1]"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("Exception raised from"), std::string::npos) << "no C++ backtraces for users: " << r.out;
}

}  // namespace
}  // namespace cascade::daemon

namespace cascade::daemon {
namespace {

#ifdef CASCADE_WITH_TOKENIZER
// `text` single-quoted for the shell.
std::string shell_quoted(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// The bundled demo model (scripts/train_demo_model.py) with its own tokenizer: our
// float32 greedy text equals the HF transformers samples recorded at training time.
TEST(DemoModel, GreedyTextMatchesTheHuggingFaceSamples) {
  const std::string dir = std::string(CASCADE_SOURCE_DIR) + "/models/demo";
  const auto ref = test::read_json(dir + "/reference_samples.json");
  for (const auto& s : ref["samples"]) {
    const std::string prompt = s["prompt"];
    const CliRun r = run_cascade("generate --model " + dir + " --prompt " + shell_quoted(prompt) +
                                 " --max-new-tokens 40 --dtype float32 --json");
    ASSERT_EQ(r.status, 0);
    EXPECT_EQ(nlohmann::json::parse(r.out)["text"], s["greedy_text_40"]) << "prompt " << nlohmann::json(prompt);
  }
}

// Issue 21, item 4: T5 with its Unigram tokenizer (tests/data/t5_text). Text prompts go to
// the encoder with the tokenizer's </s>; the decoder's tokens and their text are
// transformers' (scripts/make_fixtures.py decodes them with skip_special_tokens).
TEST(T5Text, GreedyTextMatchesTransformers) {
  const std::string dir = test::fixture("t5_text");
  const auto ref = test::read_json(dir + "/reference.json");
  std::string prompts;
  for (const auto& p : ref["prompts"]) prompts += " --prompt " + shell_quoted(p["prompt_text"].get<std::string>());
  const CliRun r = run_cascade("generate --model " + dir + prompts + " --max-new-tokens 16 --dtype float32 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  std::istringstream lines(r.out);
  for (const auto& p : ref["prompts"]) {
    std::string line;
    ASSERT_TRUE(std::getline(lines, line)) << r.out;
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["prompt_ids"], p["prompt_ids"]) << p["prompt_text"];
    EXPECT_EQ(j["output_ids"], p["output_ids"]) << p["prompt_text"];
    EXPECT_EQ(j["text"], p["output_text"]) << p["prompt_text"];
  }
}
#endif

}  // namespace
}  // namespace cascade::daemon
