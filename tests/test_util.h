// Helpers shared by the tests: fixture paths, scratch directories, file writers.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace cascade::test {

inline std::string fixture(const std::string& name) { return std::string(CASCADE_TEST_DATA) + "/" + name; }

// The folders of tests/data with a reference.json (scripts/make_fixtures.py writes
// them) whose config.json says `is_encoder_decoder` (T5) or not, sorted by name.
inline std::vector<std::string> fixtures_where(bool encoder_decoder) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(CASCADE_TEST_DATA)) {
    if (!std::filesystem::exists(e.path() / "reference.json")) continue;
    std::ifstream in(e.path() / "config.json");
    if (nlohmann::json::parse(in).value("is_encoder_decoder", false) == encoder_decoder)
      out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every decoder-only model fixture. A new family's fixture is picked up by every test
// that loops over them.
inline const std::vector<std::string>& all_fixtures() {
  static const std::vector<std::string> names = fixtures_where(false);
  return names;
}

// The encoder-decoder fixtures (T5): their reference.json gives the encoder's input as
// prompt_ids and the decoder's greedy tokens as output_ids.
inline const std::vector<std::string>& seq2seq_fixtures() {
  static const std::vector<std::string> names = fixtures_where(true);
  return names;
}

// Both kinds: the tests whose prompts and checks do not depend on the kind.
inline std::vector<std::string> every_fixture() {
  std::vector<std::string> v = all_fixtures();
  v.insert(v.end(), seq2seq_fixtures().begin(), seq2seq_fixtures().end());
  return v;
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return nlohmann::json::parse(in);
}

// " --prompt-ids a,b,c" for each prompt of a fixture's reference.json.
inline std::string reference_prompt_args(const nlohmann::json& ref) {
  std::string args;
  for (const auto& p : ref["prompts"]) {
    std::string ids;
    for (const auto& t : p["prompt_ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(t.get<int64_t>());
    args += " --prompt-ids " + ids;
  }
  return args;
}

// `cascade generate --json --logits` output (a line per prompt) against a fixture's
// reference.json: the same prompt and output ids, last logits within `tol`. Prints and
// returns the largest logit difference.
inline double expect_matches_reference(const nlohmann::json& ref, const std::string& out, const std::string& what,
                                       double tol = 1e-4) {
  std::istringstream lines(out);
  std::string line;
  size_t i = 0;
  double worst = 0;
  for (; std::getline(lines, line); ++i) {
    if (i >= ref["prompts"].size()) {
      ADD_FAILURE() << what << ": more lines than prompts: " << line;
      break;
    }
    const auto got = nlohmann::json::parse(line);
    const auto& want = ref["prompts"][i];
    EXPECT_EQ(got["prompt_ids"], want["prompt_ids"]) << what;
    EXPECT_EQ(got["output_ids"], want["output_ids"]) << what << ", prompt " << i;
    const auto a = got["last_logits"].get<std::vector<double>>(), b = want["last_logits"].get<std::vector<double>>();
    EXPECT_EQ(a.size(), b.size()) << what;
    for (size_t k = 0; k < a.size() && k < b.size(); ++k) worst = std::max(worst, std::abs(a[k] - b[k]));
  }
  EXPECT_EQ(i, ref["prompts"].size()) << what;
  EXPECT_LE(worst, tol) << what;
  std::printf("%-40s max |dlogit| vs transformers %.2e\n", what.c_str(), worst);
  return worst;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    // mkdtemp: atomic and unique, with no std::random_device (which crashed in test
    // binaries linked against the PyTorch-wheel LibTorch on the GPU machine).
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/cascade_test_XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr) << "mkdtemp " << tmpl;
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Runs the cascade binary with `args` (a shell fragment); stdout, plus stderr when
// `merge_stderr`, and the exit status.
struct CliRun {
  int status;
  std::string out;
  std::string err;  // stderr, unless it was merged into out
};
// Runs `cmd` with /bin/sh; stdout in `out`. When the command names no redirection of
// its own, stderr lands in `err`.
inline CliRun run_shell(const std::string& cmd, std::string* err_file = nullptr) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  CliRun r{WEXITSTATUS(status), out, ""};
  if (err_file) {
    std::ifstream f(*err_file);
    r.err.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    std::remove(err_file->c_str());
  }
  return r;
}
// `cascade <args>`. A run that fails prints its stderr (the last 6000 bytes), so a
// failing multi-process test says why, whatever it asserted.
inline CliRun run_cascade(const std::string& args, bool merge_stderr = false) {
  if (merge_stderr) return run_shell(std::string(CASCADE_BINARY) + " " + args + " 2>&1");
  char tmpl[] = "/tmp/cascade_stderr_XXXXXX";
  const int fd = ::mkstemp(tmpl);
  if (fd >= 0) ::close(fd);
  std::string err_file = tmpl;
  CliRun r = run_shell(std::string(CASCADE_BINARY) + " " + args + " 2>" + err_file, &err_file);
  if (r.status != 0) {
    const std::string tail = r.err.size() > 6000 ? r.err.substr(r.err.size() - 6000) : r.err;
    std::printf("cascade %s\nexited %d; its stderr:\n%s\n", args.c_str(), r.status, tail.c_str());
  }
  return r;
}

// True while process `pid` exists and is not a zombie.
inline bool process_alive(int pid) {
  if (::kill(pid, 0) != 0) return false;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  const size_t p = line.rfind(')');
  return p != std::string::npos && p + 2 < line.size() && line[p + 2] != 'Z';
}

// Asserts that `stmt` throws an exception of type E whose message contains every part.
#define EXPECT_THROW_WITH(stmt, E, ...)                                                              \
  do {                                                                                               \
    try {                                                                                            \
      stmt;                                                                                          \
      ADD_FAILURE() << "expected " #E " from " #stmt;                                                \
    } catch (const E& e) {                                                                           \
      const std::string msg = e.what();                                                              \
      for (const std::string part : std::initializer_list<std::string>{__VA_ARGS__}) {               \
        EXPECT_NE(msg.find(part), std::string::npos) << "message: " << msg << "\n  lacks: " << part; \
      }                                                                                              \
    }                                                                                                \
  } while (0)

}  // namespace cascade::test
