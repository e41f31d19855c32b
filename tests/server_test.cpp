// The daemon as people run it: `cascade serve` in its own process with real stage
// processes, spoken to over its real Unix socket. It is http/session.cpp's test too: a
// session is only reachable through a socket that serve() listens on.
#include "daemon/http/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "tests/test_util.h"

namespace cascade::test {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

int connect_to(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{120, 0};  // generous: CI machines may be slow and busy
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

struct Reply {
  int status = 0;
  std::string head, body;
  json j() const { return json::parse(body, nullptr, false); }
};

// Reads one response: by Content-Length, or to EOF (streams).
Reply read_reply(int fd) {
  std::string buf;
  char tmp[8192];
  Reply r;
  size_t want = std::string::npos;
  for (;;) {
    const size_t end = buf.find("\r\n\r\n");
    if (end != std::string::npos && r.head.empty()) {
      r.head = buf.substr(0, end);
      r.status = std::atoi(r.head.c_str() + 9);
      buf.erase(0, end + 4);
      std::smatch m;
      if (std::regex_search(r.head, m, std::regex("Content-Length: ([0-9]+)"))) want = std::stoul(m[1]);
    }
    if (!r.head.empty() && want != std::string::npos && buf.size() >= want) break;
    const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) break;
    buf.append(tmp, static_cast<size_t>(n));
  }
  r.body = buf;
  return r;
}

std::string http(const std::string& method, const std::string& target, const std::string& body,
                 const std::string& extra = "") {
  return method + " " + target + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

Reply call(const std::string& sock, const std::string& method, const std::string& target, const std::string& body = "",
           const std::string& extra = "") {
  const int fd = connect_to(sock);
  if (fd < 0) return {};
  send_all(fd, http(method, target, body, extra));
  Reply r = read_reply(fd);
  ::close(fd);
  return r;
}

// The token ids of a stream's events, and whether it ended with [DONE].
std::pair<std::vector<int64_t>, bool> stream_ids(const std::string& body) {
  std::vector<int64_t> ids;
  bool done = false;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line == "data: [DONE]") done = true;
    if (line.rfind("data: {", 0) != 0) continue;
    const json j = json::parse(line.substr(6));
    if (j["choices"][0].contains("token_ids"))
      for (const auto& t : j["choices"][0]["token_ids"]) ids.push_back(t.get<int64_t>());
  }
  return {ids, done};
}

// `cascade serve` in a child process (under `launcher`, e.g. mpirun, when given);
// stopped with SIGTERM when the object dies.
class Daemon {
 public:
  Daemon(const TempDir& dir, const std::string& model, const std::string& extra_toml, const std::string& devices = "",
         const std::string& launcher = "")
      : launcher_(launcher) {
    sock_ = dir.file("d.sock");
    cfg_ = dir.file("serve.toml");
    log_ = dir.file("serve.log");
    std::string map = devices;
    std::replace(map.begin(), map.end(), '\n', ' ');  // TOML inline tables are one line
    write_file(cfg_, "[model]\npath = \"" + model + "\"\n[placement]\n" +
                         "max_memory = { \"cpu:0\" = \"1GiB\", \"cpu:1\" = \"1GiB\", \"disk\" = \"unlimited\" }\n" +
                         (map.empty() ? "" : "device_map = { " + map + " }\n") + "offload_folder = \"" +
                         dir.file("off") + "\"\n[server]\nsocket = \"" + sock_ + "\"\n" + extra_toml);
    start();
  }
  void start() {
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 2);
      ::dup2(fd, 1);
      if (launcher_.empty()) {
        ::execl(CASCADE_BINARY, CASCADE_BINARY, "serve", "--config", cfg_.c_str(), nullptr);
      } else {
        const std::string cmd = "exec " + launcher_ + " " + CASCADE_BINARY + " serve --config " + cfg_;
        ::execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
      }
      ::_exit(127);
    }
    for (int i = 0; i < 600; ++i) {
      const int fd = connect_to(sock_);
      if (fd >= 0) {
        ::close(fd);
        return;
      }
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "the daemon did not come up:\n" << log();
  }
  ~Daemon() {
    if (pid_ > 0 && ::waitpid(pid_, &status_, WNOHANG) == 0) {
      ::kill(pid_, SIGTERM);
      wait_exit(20);
    }
  }
  // Waits up to `seconds` for the daemon to exit; its exit code, or -1.
  int wait_exit(double seconds) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) {
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    pid_ = -1;
    return -1;
  }
  std::string log() const {
    std::ifstream f(log_);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }
  const std::string& sock() const { return sock_; }
  pid_t pid() const { return pid_; }

 private:
  std::string sock_, cfg_, log_, launcher_;
  pid_t pid_ = -1;
  int status_ = 0;
};

std::string demo() { return std::string(CASCADE_SOURCE_DIR) + "/models/demo"; }
// The demo split as the README shows it: two CPU stages and the disk tier.
const char* kDemoMap =
    R"("model.embed_tokens" = "cpu:0", "model.layers.0" = "cpu:0", "model.layers.1" = "cpu:0",
       "model.layers.2" = "cpu:1", "model.layers.3" = "cpu:1", "model.layers.4" = "disk", "model.layers.5" = "disk",
       "model.norm" = "cpu:1", "lm_head" = "cpu:1")";

std::vector<int64_t> generate_ids(const std::string& model, const std::string& ids, int n) {
  const CliRun r = run_cascade("generate --model " + model + " --prompt-ids " + ids + " --max-new-tokens " +
                               std::to_string(n) + " --json");
  return json::parse(r.out)["output_ids"].get<std::vector<int64_t>>();
}

class DemoServer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    d_ = new Daemon(*dir_, demo(),
                    "max_tokens = 128\nmax_request_bytes = 4096\n[runtime]\nmax_batch = 16\n"
                    "max_seq_len = 256\nthreads_per_stage = 1\n",
                    kDemoMap);
  }
  static void TearDownTestSuite() {
    delete d_;
    delete dir_;
  }
  static TempDir* dir_;
  static Daemon* d_;
};
TempDir* DemoServer::dir_ = nullptr;
Daemon* DemoServer::d_ = nullptr;

TEST_F(DemoServer, StreamingAndNonStreamingEqualGenerate) {
  const auto want = generate_ids(demo(), "1,529,1753,3876", 20);
  const std::string body = R"({"prompt": [1, 529, 1753, 3876], "max_tokens": 20, "temperature": 0,
                               "return_token_ids": true)";
  const Reply r = call(d_->sock(), "POST", "/v1/completions", body + "}");
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.j();
  EXPECT_EQ(j["choices"][0]["token_ids"].get<std::vector<int64_t>>(), want);
  EXPECT_EQ(j["prompt_token_ids"], json({1, 529, 1753, 3876}));
  EXPECT_EQ(j["usage"]["completion_tokens"], 20);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  const Reply s = call(d_->sock(), "POST", "/v1/completions", body + R"(, "stream": true})");
  ASSERT_EQ(s.status, 200);
  EXPECT_NE(s.head.find("text/event-stream"), std::string::npos);
  const auto [ids, done] = stream_ids(s.body);
  EXPECT_TRUE(done) << s.body;
  EXPECT_EQ(ids, want);
  // Text prompts go through the model's tokenizer.
  const Reply t = call(d_->sock(), "POST", "/v1/completions", R"({"prompt": "def main():", "max_tokens": 8})");
  ASSERT_EQ(t.status, 200) << t.body;
  EXPECT_GT(t.j()["usage"]["prompt_tokens"].get<int>(), 2);
}

// Requests that once aborted the daemon (issue 19) get a 400 whose body is valid JSON,
// and a stream in flight meanwhile still ends with [DONE].
TEST_F(DemoServer, HostileRequestsGet400AndNobodyElseNotices) {
  std::string streamed;
  std::thread bystander([&] {
    streamed = call(d_->sock(), "POST", "/v1/completions",
                    R"({"prompt": [1, 529], "max_tokens": 40, "stream": true, "ignore_eos": true})")
                   .body;
  });
  const std::vector<std::pair<std::string, std::string>> hostile = {
      {"/v1/completions", R"({"prompt": "hi", "unknown": 1e999})"},
      {"/v1/completions", R"({"prompt": [1], "max_tokens": -1e400})"},
      {"/v1/completions", "{\"prompt\": tru\xff\xfe}"},
      {"/v1/completions", "{\"prompt\": \"\xc3\x28\"}"},
      {"/v1/\xff\xfe", "{}"},
  };
  for (const auto& [target, body] : hostile) {
    const Reply r = call(d_->sock(), "POST", target, body);
    EXPECT_TRUE(r.status == 400 || r.status == 404) << r.status << " for " << body;
    EXPECT_FALSE(r.j().is_discarded()) << "not JSON: " << r.body;
  }
  bystander.join();
  EXPECT_NE(streamed.find("data: [DONE]"), std::string::npos) << streamed;
  EXPECT_EQ(call(d_->sock(), "GET", "/health").status, 200) << d_->log();
}

// A socket or address the daemon cannot listen on fails before any stage starts, in a
// message that names it, and leaves no socket file (issue 19, item 7).
TEST(Server, BadListenAddressesFailFastAndLeaveNothing) {
  TempDir dir;
  // A TCP port that is taken: bind one first.
  const int taken = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(taken, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(taken, 1), 0);
  socklen_t len = sizeof a;
  ::getsockname(taken, reinterpret_cast<sockaddr*>(&a), &len);
  const std::string port = std::to_string(ntohs(a.sin_port));
  const std::string sock = dir.file("d.sock");
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"socket = \"" + dir.file("no/such/dir/d.sock") + "\"\n", {"cannot listen on unix:", "no/such/dir/d.sock"}},
      {"socket = \"" + dir.file(std::string(120, 'x')) + "\"\n", {"a Unix socket path must be under 108 bytes"}},
      {"socket = \"" + sock + "\"\ntcp = \"127.0.0.1:" + port + "\"\n",
       {"cannot listen on tcp:127.0.0.1:" + port, "server.tcp"}},
  };
  for (const auto& [server, want] : cases) {
    write_file(dir.file("c.toml"), "[model]\npath = \"" + demo() + "\"\n[server]\n" + server);
    const auto t0 = Clock::now();
    const CliRun r = run_cascade("serve --config " + dir.file("c.toml"), /*merge_stderr=*/true);
    EXPECT_NE(r.status, 0) << r.out;
    for (const auto& part : want) EXPECT_NE(r.out.find(part), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("stage process"), std::string::npos) << "stages started anyway:\n" << r.out;
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(30));
    EXPECT_FALSE(std::filesystem::exists(sock)) << "socket file left behind";
  }
  ::close(taken);
}

TEST_F(DemoServer, SixteenConcurrentStreamingClientsGetWhatTheyWouldAlone) {
  auto body = [](int i) {
    return json({{"prompt", {1, 529 + i, 1753}},
                 {"max_tokens", 24},
                 {"temperature", 0.8},
                 {"seed", 1000 + i},
                 {"stream", true},
                 {"return_token_ids", true}})
        .dump();
  };
  std::vector<std::vector<int64_t>> together(16);
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  for (int i = 0; i < 16; ++i) {
    ts.emplace_back([&, i] {
      const Reply r = call(d_->sock(), "POST", "/v1/completions", body(i));
      const auto [ids, done] = stream_ids(r.body);
      if (r.status == 200 && done) ++ok;
      together[static_cast<size_t>(i)] = ids;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok, 16);
  for (int i = 0; i < 16; ++i) {
    const auto alone = stream_ids(call(d_->sock(), "POST", "/v1/completions", body(i)).body).first;
    EXPECT_EQ(alone.size(), 24u);
    EXPECT_EQ(alone, together[static_cast<size_t>(i)]) << "client " << i;
  }
}

TEST_F(DemoServer, EveryBadInputGetsItsErrorAndTheServerCarriesOn) {
  const std::string good = R"({"prompt": [1, 2, 3], "max_tokens": 3})";
  struct Case {
    std::string method, target, body;
    int status;
    std::string part;
  };
  const std::vector<Case> cases = {
      {"POST", "/v1/completions", "{\"prompt\": ", 400, "not valid JSON"},
      {"POST", "/v1/completions", R"({"prompt": [1, 2], "max_tokens": "many"})", 400, "'max_tokens' must be"},
      {"POST", "/v1/completions", "{\"prompt\": \"caf\xc3\x28\"}", 400, "UTF-8"},
      {"POST", "/v1/completions", R"({"prompt": [1, 99999]})", 400, "token id 99999 is out of range"},
      {"POST", "/v1/completions", json({{"prompt", std::vector<int>(256, 5)}}).dump(), 400, "max_seq_len is 256"},
      {"POST", "/v1/completions", R"({"prompt": [1], "max_tokens": 129})", 400, "cap of 128"},
      {"POST", "/v1/completions", json({{"prompt", std::string(5000, 'a')}}).dump(), 413, "max_request_bytes"},
      {"GET", "/v1/nothing", "", 404, "no such endpoint"},
      {"GET", "/v1/completions", "", 405, "use POST"},
      {"POST", "/health", "{}", 405, "use GET"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})", 400,
       "this model has no chat template"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "robot", "content": "hi"}]})", 400, "role 'robot'"},
  };
  for (const auto& c : cases) {
    const Reply r = call(d_->sock(), c.method, c.target, c.body);
    EXPECT_EQ(r.status, c.status) << c.target << " " << c.body.substr(0, 60) << "\n" << r.body;
    const json j = r.j();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(c.part), std::string::npos) << r.body;
    EXPECT_EQ(call(d_->sock(), "POST", "/v1/completions", good).status, 200) << "after " << c.part;
  }
}

// /v1/chat/completions on the demo model given a chat template: the reply is what
// /v1/completions gives for the rendered prompt's tokens, streamed or not; the
// template's raise_exception reaches the client as a 400 with its message.
TEST(Server, ChatCompletionsRenderTheModelsTemplate) {
  TempDir dir;
  const std::string model = dir.file("model");
  std::filesystem::create_directory(model);
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"})
    std::filesystem::create_symlink(demo() + "/" + f, model + "/" + f);
  write_file(model + "/tokenizer_config.json", json({{"eos_token", "<|endoftext|>"},
                                                     {"chat_template",
                                                      "{% if messages | length > 3 %}{{ raise_exception('at most "
                                                      "three messages, please') }}{% endif %}"
                                                      "{% for m in messages %}{{ m.role | capitalize }}: "
                                                      "{{ m.content }}\n{% endfor %}"
                                                      "{% if add_generation_prompt %}Assistant:{% endif %}"}})
                                                   .dump());
  Daemon d(dir, model, "[runtime]\nmax_batch = 4\nmax_seq_len = 256\nthreads_per_stage = 1\n");
  const json messages = json::array(
      {{{"role", "system"}, {"content", "You tell stories."}}, {{"role", "user"}, {"content", "Once upon a time"}}});
  const CliRun tok =
      run_cascade("tokenize --tokenizer " + model + " 'System: You tell stories.\nUser: Once upon a time\nAssistant:'");
  const json ids = json::parse(tok.out)["ids"];
  const Reply plain =
      call(d.sock(), "POST", "/v1/completions", json({{"prompt", ids}, {"max_tokens", 12}, {"temperature", 0}}).dump());
  ASSERT_EQ(plain.status, 200) << plain.body;
  const json want = plain.j()["choices"][0];
  ASSERT_FALSE(want["text"].get<std::string>().empty()) << plain.body;  // something to compare

  const Reply chat = call(d.sock(), "POST", "/v1/chat/completions",
                          json({{"messages", messages}, {"max_tokens", 12}, {"temperature", 0}}).dump());
  ASSERT_EQ(chat.status, 200) << chat.body;
  const json c = chat.j();
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], want["text"]);
  EXPECT_EQ(c["choices"][0]["finish_reason"], want["finish_reason"]);
  EXPECT_EQ(c["usage"]["prompt_tokens"], ids.size());

  const Reply streamed =
      call(d.sock(), "POST", "/v1/chat/completions",
           json({{"messages", messages}, {"max_tokens", 12}, {"temperature", 0}, {"stream", true}}).dump());
  ASSERT_EQ(streamed.status, 200);
  std::string text, finish;
  int events = 0;
  bool role_first = false, done = false;
  std::istringstream in(streamed.body);
  for (std::string line; std::getline(in, line);) {
    if (line == "data: [DONE]") done = true;
    if (line.rfind("data: {", 0) != 0) continue;
    const json e = json::parse(line.substr(6));
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    const json& delta = e["choices"][0]["delta"];
    if (events++ == 0) role_first = delta.value("role", "") == "assistant";
    if (delta.contains("content")) text += delta["content"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_TRUE(role_first && done) << streamed.body;
  EXPECT_EQ(text, want["text"]);
  EXPECT_EQ(finish, want["finish_reason"]);

  json four = messages;
  four.push_back({{"role", "assistant"}, {"content", "Yes?"}});
  four.push_back({{"role", "user"}, {"content", "More."}});
  const Reply raised = call(d.sock(), "POST", "/v1/chat/completions", json({{"messages", four}}).dump());
  EXPECT_EQ(raised.status, 400);
  EXPECT_EQ(raised.j()["error"]["message"], "at most three messages, please");
  EXPECT_EQ(
      call(d.sock(), "POST", "/v1/chat/completions", json({{"messages", messages}, {"max_tokens", 2}}).dump()).status,
      200);
}

// vLLM's /tokenize and /detokenize, the context length in /v1/models, and the usage
// chunk a stream ends with when stream_options.include_usage asks for it.
TEST_F(DemoServer, TokenizeDetokenizeAndStreamUsage) {
  const Reply t =
      call(d_->sock(), "POST", "/tokenize", R"({"prompt": "Once upon a time", "add_special_tokens": false})");
  ASSERT_EQ(t.status, 200) << t.body;
  const json ids = t.j()["tokens"];
  EXPECT_EQ(t.j()["count"], ids.size());
  EXPECT_EQ(t.j()["max_model_len"], 256);
  EXPECT_GT(ids.size(), 1u);
  const Reply back = call(d_->sock(), "POST", "/detokenize", json({{"tokens", ids}}).dump());
  ASSERT_EQ(back.status, 200) << back.body;
  EXPECT_EQ(back.j()["prompt"], "Once upon a time");
  EXPECT_EQ(call(d_->sock(), "POST", "/detokenize", R"({"tokens": [1, -5]})").status, 400);
  EXPECT_EQ(call(d_->sock(), "POST", "/tokenize", R"({"text": "x"})").status, 400);
  EXPECT_EQ(call(d_->sock(), "GET", "/v1/models").j()["data"][0]["max_model_len"], 256);

  const Reply s = call(d_->sock(), "POST", "/v1/completions",
                       json({{"prompt", ids},
                             {"max_tokens", 5},
                             {"temperature", 0},
                             {"stream", true},
                             {"ignore_eos", true},
                             {"stream_options", {{"include_usage", true}}}})
                           .dump());
  ASSERT_EQ(s.status, 200);
  json usage;
  std::istringstream in(s.body);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("data: {", 0) == 0 && json::parse(line.substr(6)).contains("usage"))
      usage = json::parse(line.substr(6));
  ASSERT_TRUE(usage.is_object()) << s.body;
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["prompt_tokens"], ids.size());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 5);
}

// Issue 20 item 3 across the stage processes (two CPU stages and the disk tier): n
// choices forked from one prefill, logprobs from the last stage, echo; streamed too.
TEST_F(DemoServer, ChoicesLogprobsAndEchoOverTheStages) {
  const auto want = generate_ids(demo(), "1,529,1753,3876", 6);
  const json body = {{"prompt", {1, 529, 1753, 3876}},
                     {"max_tokens", 6},
                     {"temperature", 0},
                     {"n", 2},
                     {"logprobs", 3},
                     {"echo", true},
                     {"return_token_ids", true},
                     {"ignore_eos", true}};
  const Reply r = call(d_->sock(), "POST", "/v1/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.j();
  ASSERT_EQ(j["choices"].size(), 2u);
  for (int c = 0; c < 2; ++c) {
    const json& ch = j["choices"][c];
    EXPECT_EQ(ch["index"], c);
    EXPECT_EQ(ch["token_ids"].get<std::vector<int64_t>>(), want);
    const json& lp = ch["logprobs"];
    ASSERT_EQ(lp["tokens"].size(), 4u + 6u) << lp;  // the prompt's, then the generated ones
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    for (size_t i = 1; i < 10; ++i) {
      double best = -1e9;
      for (const auto& [tok, x] : lp["top_logprobs"][i].items()) best = std::max(best, x.get<double>());
      EXPECT_LE(lp["token_logprobs"][i].get<double>(), best + 1e-9);
      if (i >= 4) {
        EXPECT_NEAR(lp["token_logprobs"][i].get<double>(), best, 1e-9) << "greedy picks the best";
      }
      EXPECT_LE(lp["top_logprobs"][i].size(), 4u);
    }
  }
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);

  json streamed = body;
  streamed["stream"] = true;
  const Reply s = call(d_->sock(), "POST", "/v1/completions", streamed.dump());
  ASSERT_EQ(s.status, 200);
  std::map<int, std::vector<int64_t>> ids;
  std::map<int, std::string> finish;
  int done = 0;
  std::istringstream in(s.body);
  for (std::string line; std::getline(in, line);) {
    done += line == "data: [DONE]";
    if (line.rfind("data: {", 0) != 0) continue;
    const json ev = json::parse(line.substr(6));
    const json& ch = ev["choices"][0];
    for (const auto& t : ch.value("token_ids", json::array())) ids[ch["index"].get<int>()].push_back(t.get<int64_t>());
    if (!ch["finish_reason"].is_null()) finish[ch["index"].get<int>()] = ch["finish_reason"];
  }
  EXPECT_EQ(done, 1) << s.body;
  EXPECT_EQ(ids[0], want);
  EXPECT_EQ(ids[1], want);
  EXPECT_EQ(finish.size(), 2u);

  // Sampled: choice i is the request alone with seed + i, penalties and all.
  json sampled = {{"prompt", {1, 529, 1753}}, {"max_tokens", 8},         {"temperature", 1.0},        {"seed", 40},
                  {"return_token_ids", true}, {"presence_penalty", 0.5}, {"repetition_penalty", 1.2}, {"min_p", 0.02},
                  {"ignore_eos", true}};
  json three = sampled;
  three["n"] = 3;
  const json all = call(d_->sock(), "POST", "/v1/completions", three.dump()).j();
  ASSERT_EQ(all["choices"].size(), 3u) << all;
  std::set<std::vector<int64_t>> distinct;
  for (int c = 0; c < 3; ++c) {
    sampled["seed"] = 40 + c;
    const json one = call(d_->sock(), "POST", "/v1/completions", sampled.dump()).j();
    EXPECT_EQ(all["choices"][c]["token_ids"], one["choices"][0]["token_ids"]) << "choice " << c;
    distinct.insert(all["choices"][c]["token_ids"].get<std::vector<int64_t>>());
  }
  EXPECT_GT(distinct.size(), 1u) << "three seeds, one sequence";
  EXPECT_EQ(call(d_->sock(), "POST", "/v1/completions", R"({"prompt": [1], "n": 17})").status, 400);
}

TEST_F(DemoServer, InfoEndpoints) {
  const Reply h = call(d_->sock(), "GET", "/health");
  ASSERT_EQ(h.status, 200);
  EXPECT_EQ(h.j()["status"], "ok");
  EXPECT_EQ(h.j()["stages"].size(), 2u);
  EXPECT_EQ(call(d_->sock(), "GET", "/v1/models").j()["data"][0]["id"], "demo");
  EXPECT_EQ(call(d_->sock(), "GET", "/v1/device_map").j()["device_map"]["model.layers.4"], "disk");
  const Reply m = call(d_->sock(), "GET", "/metrics");
  for (const char* k :
       {"cascade_requests_total{status=\"200\"}", "cascade_kv_slots_total 16",
        "cascade_time_to_first_token_seconds_count", "cascade_stage_busy_seconds_total{stage=\"stage 2"})
    EXPECT_NE(m.body.find(k), std::string::npos) << k << "\n" << m.body;
}

TEST_F(DemoServer, AClientThatLeavesMidStreamFreesItsSlot) {
  const int fd = connect_to(d_->sock());
  send_all(fd, http("POST", "/v1/completions",
                    R"({"prompt": [1, 2], "max_tokens": 128, "stream": true, "ignore_eos": true})"));
  char buf[256];
  ASSERT_GT(::recv(fd, buf, sizeof buf, 0), 0);  // the stream has started
  ::close(fd);
  bool freed = false;
  for (int i = 0; i < 200 && !freed; ++i) {
    const std::string m = call(d_->sock(), "GET", "/metrics").body;
    freed = m.find("cascade_requests_total{status=\"499\"} 1") != std::string::npos &&
            m.find("cascade_kv_slots_used 0") != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(freed) << call(d_->sock(), "GET", "/metrics").body;
}

const std::string kAuth = "Authorization: Bearer sekrit\r\n";

// Polls GET /metrics until it has every line in `lines` (up to 20 s), so that a test acts on
// the daemon's own view rather than on a guess of how long a busy machine takes.
bool await_metrics(const std::string& sock, const std::vector<std::string>& lines) {
  const auto end = Clock::now() + std::chrono::seconds(20);
  for (;;) {
    const std::string m = call(sock, "GET", "/metrics", "", kAuth).body;
    bool all = true;
    for (const auto& l : lines) all = all && m.find("\n" + l + "\n") != std::string::npos;
    if (all) return true;
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Without a stream nothing is written until the end, so the server watches the socket:
// a client that hangs up frees its slot within a second (issue 19, item 4). The first
// stage sleeps 20 ms a step (CASCADE_FAULT=slow), so the generation would run for
// seconds more.
TEST(Server, ANonStreamingClientThatLeavesFreesItsSlotWithinASecond) {
  TempDir dir;
  ::setenv("CASCADE_FAULT", "1:step=0:slow", 1);
  Daemon d(dir, demo(), "[runtime]\nmax_batch = 2\nmax_seq_len = 256\nthreads_per_stage = 1\n", kDemoMap);
  ::unsetenv("CASCADE_FAULT");
  const int fd = connect_to(d.sock());
  send_all(fd, http("POST", "/v1/completions", R"({"prompt": [1, 2], "max_tokens": 200, "ignore_eos": true})"));
  ASSERT_TRUE(await_metrics(d.sock(), {"cascade_kv_slots_used 1"})) << d.log();
  ::close(fd);
  const auto t0 = Clock::now();
  EXPECT_TRUE(await_metrics(d.sock(), {"cascade_kv_slots_used 0", "cascade_requests_total{status=\"499\"} 1"}))
      << call(d.sock(), "GET", "/metrics").body;
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(1500));
}

// Bad framing gets a 400 that says so, then a close; the daemon carries on.
TEST_F(DemoServer, MalformedFramingGets400) {
  const std::vector<std::string> framings = {
      "GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
      std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 11) + std::string(64, 'A') + "\r\n\r\n",
  };
  for (const auto& f : framings) {
    const int fd = connect_to(d_->sock());
    send_all(fd, f);
    const Reply r = read_reply(fd);
    ::close(fd);
    EXPECT_EQ(r.status, 400) << "for: " << f << "\n" << r.head;
    EXPECT_NE(r.body.find("malformed HTTP request"), std::string::npos) << r.body;
  }
  EXPECT_EQ(call(d_->sock(), "GET", "/health").status, 200);
}

// A kept-alive connection's later requests get header_timeout too (10 s here), not
// idle_timeout (60 s): a trickling client is cut off as soon on its second request.
TEST_F(DemoServer, HeaderDeadlineAppliesToEveryRequestOfAConnection) {
  const int fd = connect_to(d_->sock());
  send_all(fd, http("GET", "/health", ""));
  ASSERT_EQ(read_reply(fd).status, 200);
  send_all(fd, "GET /health HTTP/1.1\r\nHo");
  const auto t0 = Clock::now();
  for (int i = 0; i < 30; ++i) {  // a byte now and then, never the whole header
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (::send(fd, "s", 1, MSG_NOSIGNAL) <= 0) break;
  }
  char c;
  EXPECT_LE(::recv(fd, &c, 1, 0), 0);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GT(s, 8.0);
  EXPECT_LT(s, 20.0) << "cut off after " << s << " s";
  ::close(fd);
}

TEST_F(DemoServer, SocketIsPrivateAndNotStolen) {
  struct stat st {};
  ASSERT_EQ(::stat(d_->sock().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_THROW_WITH(daemon::claim_socket_path(d_->sock()), std::runtime_error, "a live daemon is already serving");
}

TEST(Server, StaleSocketIsReplaced) {
  TempDir dir;
  const std::string path = dir.file("stale.sock");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);  // bound, then abandoned: a stale file
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ::close(fd);
  EXPECT_EQ(daemon::claim_socket_path(path), "stale");
  EXPECT_EQ(daemon::claim_socket_path(path), "free");
  write_file(path, "x");
  EXPECT_THROW_WITH(daemon::claim_socket_path(path), std::runtime_error, "is not a socket");
}

// A small daemon on a fixture without a tokenizer: limits, faults, shutdown. `server`:
// more [server] keys.
std::string small_server_toml(const std::string& server = "") {
  return "max_connections = 4\nmax_queue = 1\nheader_timeout = 3\nidle_timeout = 4\napi_key = \"sekrit\"\n"
         "shutdown_grace = 20\n" +
         server + "[runtime]\nmax_batch = 1\nmax_seq_len = 2048\nheartbeat_timeout = 2\n";
}
const char* kTwoStages = R"("model.embed_tokens" = "cpu:0", "model.layers.0" = "cpu:0", "model.layers.1" = "cpu:1",
                            "model.norm" = "cpu:1", "lm_head" = "cpu:1")";
TEST(Server, LimitsAuthAndSlowClients) {
  TempDir dir;
  const int port = 20000 + ::getpid() % 20000;
  Daemon d(dir, fixture("llama_gqa"), "tcp = \"127.0.0.1:" + std::to_string(port) + "\"\n" + small_server_toml(),
           kTwoStages);
  {  // TCP, loopback, same API and the same key
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << "no TCP listener on port " << port;
    send_all(fd, http("GET", "/health", "", kAuth));
    const Reply r = read_reply(fd);
    ::close(fd);
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.j()["status"], "ok");
  }
  EXPECT_EQ(call(d.sock(), "GET", "/health").status, 401);
  EXPECT_EQ(call(d.sock(), "GET", "/health", "", "Authorization: Bearer wrong\r\n").status, 401);
  EXPECT_EQ(call(d.sock(), "GET", "/health", "", kAuth).status, 200);
  const Reply text = call(d.sock(), "POST", "/v1/completions", R"({"prompt": "hello"})", kAuth);
  EXPECT_EQ(text.status, 400);
  EXPECT_NE(text.body.find("no tokenizer.json: send the prompt as token ids"), std::string::npos) << text.body;

  // One slot, a queue of one: a third concurrent request is turned away.
  const std::string longreq = R"({"prompt": [1, 2], "max_tokens": 600, "temperature": 0, "ignore_eos": true})";
  std::vector<std::thread> ts;
  std::vector<int> status(2);
  for (int i = 0; i < 2; ++i)
    ts.emplace_back(
        [&, i] { status[static_cast<size_t>(i)] = call(d.sock(), "POST", "/v1/completions", longreq, kAuth).status; });
  EXPECT_TRUE(await_metrics(d.sock(), {"cascade_requests_in_flight 1", "cascade_queue_length 1"}));
  const Reply busy = call(d.sock(), "POST", "/v1/completions", longreq, kAuth);
  for (auto& t : ts) t.join();
  EXPECT_EQ(busy.status, 429) << busy.body;
  EXPECT_EQ(status, (std::vector<int>{200, 200}));

  // At max_connections, a new connection takes the place of the oldest that has not sent
  // a whole request (here: idle ones). The server may not have seen the clients above
  // hang up yet (a busy machine): wait until the only connection it holds is the one asking.
  EXPECT_TRUE(await_metrics(d.sock(), {"cascade_open_connections 1"}));
  std::vector<int> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(connect_to(d.sock()));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // an order the server sees
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(call(d.sock(), "GET", "/health", "", kAuth).status, 200);
  char c;
  EXPECT_EQ(::recv(idle[0], &c, 1, 0), 0) << "the oldest idle connection should have been dropped";
  EXPECT_EQ(::recv(idle[3], &c, 1, MSG_DONTWAIT), -1) << "the newest idle connection should still be open";
  for (int fd : idle) ::close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));

  // A client that never finishes its header is cut off after header_timeout.
  const int slow = connect_to(d.sock());
  send_all(slow, "GET /health HTTP/1.1\r\nHost: x\r\n");
  const auto t0 = Clock::now();
  EXPECT_LE(::recv(slow, &c, 1, 0), 0);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(8));  // header_timeout is 3 s
  ::close(slow);
  EXPECT_EQ(call(d.sock(), "GET", "/health", "", kAuth).status, 200);

  // A keep-alive connection left idle is closed after idle_timeout (4 s here).
  const int idle_fd = connect_to(d.sock());
  send_all(idle_fd, http("GET", "/health", "", kAuth));
  EXPECT_EQ(read_reply(idle_fd).status, 200);
  const auto i0 = Clock::now();
  EXPECT_LE(::recv(idle_fd, &c, 1, 0), 0);
  const double idle_s = std::chrono::duration<double>(Clock::now() - i0).count();
  EXPECT_GT(idle_s, 2.0);
  EXPECT_LT(idle_s, 12.0);
  ::close(idle_fd);
}

// Issue 21, item 4: a T5 checkpoint with its Unigram tokenizer (tests/data/t5_text),
// encoder and decoder on two CPU stages, serves text prompts: the tokens and the text
// transformers gives for the same prompt, plain and streamed, concurrently.
TEST(Server, AnEncoderDecoderModelServesItsTokens) {
  TempDir dir;
  const std::string model = fixture("t5_text");
  const json ref = read_json(model + "/reference.json");
  Daemon d(dir, model, "[runtime]\nmax_batch = 4\nmax_seq_len = 64\n",
           R"("shared" = "cpu:0", "encoder.block.0" = "cpu:0", "encoder.block.1" = "cpu:0",
              "encoder.final_layer_norm" = "cpu:0", "decoder.block.0" = "cpu:1", "decoder.block.1" = "cpu:1",
              "decoder.final_layer_norm" = "cpu:1", "lm_head" = "cpu:1")");
  const size_t n = ref["prompts"].size();
  std::vector<Reply> text(n), ids(n);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < n; ++i) {
    const json& p = ref["prompts"][i];
    json body = {{"prompt", p["prompt_text"]},
                 {"max_tokens", 16},
                 {"temperature", 0},
                 {"ignore_eos", true},
                 {"return_token_ids", true}};
    clients.emplace_back([&, i, body] { text[i] = call(d.sock(), "POST", "/v1/completions", body.dump()); });
    body["prompt"] = p["prompt_ids"];  // the same prompt as ids, streamed
    body["stream"] = true;
    clients.emplace_back([&, i, body] { ids[i] = call(d.sock(), "POST", "/v1/completions", body.dump()); });
  }
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < n; ++i) {
    const json& p = ref["prompts"][i];
    ASSERT_EQ(text[i].status, 200) << text[i].body << d.log();
    const json c = text[i].j()["choices"][0];
    EXPECT_EQ(c["token_ids"], p["output_ids"]) << p["prompt_text"];
    EXPECT_EQ(c["text"], p["output_text"]) << p["prompt_text"];
    EXPECT_EQ(text[i].j()["usage"]["prompt_tokens"], p["prompt_ids"].size()) << p["prompt_text"];
    const auto [streamed, done] = stream_ids(ids[i].body);
    EXPECT_TRUE(done);
    EXPECT_EQ(json(streamed), p["output_ids"]) << "prompt " << i << " as ids, streamed";
  }
  const Reply echo = call(d.sock(), "POST", "/v1/completions", R"({"prompt": [5, 6], "echo": true, "logprobs": 1})");
  EXPECT_EQ(echo.status, 400);
  EXPECT_NE(echo.body.find("encoder-decoder"), std::string::npos) << echo.body;
  EXPECT_EQ(call(d.sock(), "POST", "/v1/completions", R"({"prompt": [5, 6], "max_tokens": 2})").status, 200);
}

// Issue 19, item 3: 300 clients that trickle header bytes and reconnect when dropped,
// beside well-behaved ones. Connections that have not sent a whole request are capped
// apart from busy ones (server.max_pending_connections) and the oldest go first, so
// the good requests still get through (>= 95% of them).
TEST(Server, SlowReconnectingClientsDoNotLockOthersOut) {
  TempDir dir;
  Daemon d(dir, fixture("llama_gqa"), "[runtime]\nmax_batch = 4\nthreads_per_stage = 1\n", kTwoStages);
  constexpr int kSlow = 300;
  std::atomic<bool> done{false};
  std::atomic<int64_t> reconnects{0};
  std::thread slow([&] {
    auto open = [&] {
      const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::snprintf(a.sun_path, sizeof a.sun_path, "%s", d.sock().c_str());
      if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
      }
      ::send(fd, "GET /health HTTP/1.1\r\nX-Slow: ", 30, MSG_NOSIGNAL);
      return fd;
    };
    std::vector<int> fds(kSlow, -1);
    while (!done) {
      for (int& fd : fds) {
        char c;
        const ssize_t n = fd < 0 ? 0 : ::recv(fd, &c, 1, MSG_DONTWAIT);
        if (fd < 0 || n == 0 || (n < 0 && errno != EAGAIN) || ::send(fd, "a", 1, MSG_NOSIGNAL) <= 0) {
          if (fd >= 0) ::close(fd), ++reconnects;
          fd = open();
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  });
  std::this_thread::sleep_for(std::chrono::seconds(2));  // let them fill every place they can
  std::atomic<int> ok{0};
  std::vector<std::thread> good;
  for (int t = 0; t < 4; ++t) {
    good.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        if (call(d.sock(), "POST", "/v1/completions", R"({"prompt": [1, 2, 3], "max_tokens": 4})").status == 200) ++ok;
      }
    });
  }
  for (auto& t : good) t.join();
  done = true;
  slow.join();
  const std::string metrics = call(d.sock(), "GET", "/metrics").body;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(metrics, m, std::regex("cascade_connections_evicted_total ([0-9]+)"))) << metrics;
  std::printf("%d slow clients (%lld reconnects): %d of 40 good requests served, %s connections evicted\n", kSlow,
              static_cast<long long>(reconnects.load()), ok.load(), m[1].str().c_str());
  EXPECT_GE(ok.load(), 38);  // 95% of 40
  EXPECT_GT(std::stoll(m[1]), 0) << "the slow clients never filled the pending places";
}

// Issue 19, item 6: the stages this daemon spawned talk to it, and Open MPI's runtime
// to both, over loopback only: every TCP connection of these processes is local to
// 127.0.0.1 (or ::1), and the stages were told so (OMPI_MCA_*_tcp_if_include=lo).
TEST_F(DemoServer, SpawnedStagesTalkOverLoopbackOnly) {
  const json h = call(d_->sock(), "GET", "/health").j();
  std::vector<int> pids = {d_->pid()};
  for (const auto& s : h["stages"]) pids.push_back(s["pid"].get<int>());
  EXPECT_TRUE(await_metrics(d_->sock(), {"cascade_open_connections 1"}));  // steps have run: the TCP links exist
  const Reply warm = call(d_->sock(), "POST", "/v1/completions", R"({"prompt": [1, 2], "max_tokens": 2})");
  ASSERT_EQ(warm.status, 200) << warm.body;
  int established = 0;
  for (int pid : pids) {
    std::set<std::string> inodes;
    const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
    for (const auto& e : std::filesystem::directory_iterator(fd_dir)) {
      std::error_code ec;
      const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
      if (!ec && target.rfind("socket:[", 0) == 0) inodes.insert(target.substr(8, target.size() - 9));
    }
    for (const char* table : {"tcp", "tcp6"}) {
      std::ifstream f("/proc/" + std::to_string(pid) + "/net/" + table);
      std::string line;
      std::getline(f, line);  // header
      while (std::getline(f, line)) {
        std::istringstream in(line);
        std::string slot, local, remote, state, skip, inode;
        in >> slot >> local >> remote >> state;
        for (int i = 0; i < 5; ++i) in >> skip;
        in >> inode;
        if (!inodes.count(inode) || state != "01") continue;  // 01: established
        ++established;
        const std::string addr = local.substr(0, local.find(':'));
        const bool loopback = addr == "0100007F" || addr == "00000000000000000000000001000000" ||
                              addr == "0000000000000000FFFF00000100007F";
        EXPECT_TRUE(loopback) << "pid " << pid << " has a TCP connection from " << local << " (" << table << ")";
      }
    }
  }
  EXPECT_GT(established, 0) << "no TCP connection found: the check saw nothing";
  std::ifstream env("/proc/" + std::to_string(pids[1]) + "/environ");
  const std::string environ((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
  EXPECT_NE(environ.find("OMPI_MCA_btl_tcp_if_include=lo"), std::string::npos);
  EXPECT_NE(environ.find("OMPI_MCA_oob_tcp_if_include=lo"), std::string::npos);
  // The daemon restarts failed stages itself: Open MPI must not abort its runtime when one exits non-zero.
  EXPECT_NE(environ.find("OMPI_MCA_orte_abort_on_non_zero_status=0"), std::string::npos);
}

// When every connection is busy (a request read, its answer under way) there is nobody
// to drop: a new one gets 429 and is closed.
TEST(Server, ConnectionsPastTheLimitWhenAllAreBusyGet429) {
  TempDir dir;
  Daemon d(dir, fixture("llama_gqa"), "max_connections = 3\n[runtime]\nmax_batch = 4\nthreads_per_stage = 1\n",
           kTwoStages);
  const std::string stream =
      http("POST", "/v1/completions", R"({"prompt": [1, 2], "max_tokens": 1500, "stream": true, "ignore_eos": true})");
  std::vector<int> busy;
  for (int i = 0; i < 3; ++i) {
    busy.push_back(connect_to(d.sock()));
    send_all(busy.back(), stream);
    char head[12];
    ASSERT_EQ(::recv(busy.back(), head, sizeof head, MSG_WAITALL), 12);  // "HTTP/1.1 200": it is streaming
  }
  const Reply over = call(d.sock(), "GET", "/health");
  EXPECT_EQ(over.status, 429);
  EXPECT_NE(over.body.find("too many connections"), std::string::npos) << over.body;
  for (int fd : busy) ::close(fd);
}

TEST(Server, SigtermFinishesInFlightRequestsThenExitsCleanly) {
  TempDir dir;
  Daemon d(dir, fixture("llama_gqa"), small_server_toml(), kTwoStages);
  Reply r;
  std::thread t([&] {
    r = call(d.sock(), "POST", "/v1/completions",
             R"({"prompt": [1, 2], "max_tokens": 1500, "stream": true, "return_token_ids": true, "ignore_eos": true})",
             kAuth);
  });
  EXPECT_TRUE(await_metrics(d.sock(), {"cascade_requests_in_flight 1"}));
  ::kill(d.pid(), SIGTERM);
  const int rc = d.wait_exit(30);
  t.join();
  EXPECT_EQ(rc, 0) << d.log();
  const auto [ids, done] = stream_ids(r.body);
  EXPECT_TRUE(done) << r.body.substr(0, 300);
  EXPECT_EQ(ids.size(), 1500u);
  EXPECT_FALSE(std::filesystem::exists(d.sock()));
  EXPECT_NE(d.log().find("SIGTERM: finishing in-flight requests"), std::string::npos);
}

// True when the log has a "stage failure:" line that says `what` (the stage that noticed
// may be a neighbour of the one that failed: both are named).
bool failure_logged(const std::string& log, const std::string& what) {
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("cascade: stage failure: ", 0) == 0 && line.find(what) != std::string::npos) return true;
  return false;
}

// Polls /health until it reports `restarts` restarts and status ok; the seconds that took, or -1.
double await_restarts(const Daemon& d, int restarts, double limit) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::duration<double>(limit)) {
    const json h = call(d.sock(), "GET", "/health", "", kAuth).j();
    if (h.is_object() && h.value("restarts", -1) == restarts && h.value("status", "") == "ok")
      return std::chrono::duration<double>(Clock::now() - t0).count();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return -1;
}

// Issue 19, item 5: a stage killed mid-request fails that request with a 503 naming it;
// the daemon restarts the stages and serves again. A stage stopped while the daemon is
// idle (SIGSTOP: no heartbeat) is noticed and replaced too.
TEST(Server, AKilledOrStalledStageIsRestartedAndTheDaemonServesAgain) {
  TempDir dir;
  Daemon d(dir, fixture("llama_gqa"), small_server_toml(), kTwoStages);
  const std::string req = R"({"prompt": [1, 2], "max_tokens": 8, "temperature": 0, "return_token_ids": true})";
  const Reply before = call(d.sock(), "POST", "/v1/completions", req, kAuth);
  ASSERT_EQ(before.status, 200) << before.body;
  const json h = call(d.sock(), "GET", "/health", "", kAuth).j();
  const int stage1 = h["stages"][0]["pid"].get<int>(), stage2 = h["stages"][1]["pid"].get<int>();
  Reply r;
  std::thread t([&] {
    r = call(d.sock(), "POST", "/v1/completions", R"({"prompt": [1, 2], "max_tokens": 2000, "ignore_eos": true})",
             kAuth);
  });
  ASSERT_TRUE(await_metrics(d.sock(), {"cascade_requests_in_flight 1"}));
  ::kill(stage2, SIGKILL);
  t.join();
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.body.find("stage 2 (rank 2, cpu:1)"), std::string::npos) << r.body;
  const double first = await_restarts(d, 1, 30);
  ASSERT_GE(first, 0) << d.log();
  const Reply after = call(d.sock(), "POST", "/v1/completions", req, kAuth);
  EXPECT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(after.j()["choices"][0]["token_ids"], before.j()["choices"][0]["token_ids"]);

  const json h2 = call(d.sock(), "GET", "/health", "", kAuth).j();
  const int new1 = h2["stages"][0]["pid"].get<int>();
  EXPECT_NE(new1, stage1);
  EXPECT_FALSE(process_alive(stage1)) << "the old stage 1 outlived the restart";
  ::kill(new1, SIGSTOP);  // idle: only the heartbeat shows it (heartbeat_timeout = 2 s)
  const double second = await_restarts(d, 2, 30);
  ::kill(new1, SIGKILL);
  ASSERT_GE(second, 0) << d.log();
  EXPECT_EQ(call(d.sock(), "POST", "/v1/completions", req, kAuth).status, 200);
  EXPECT_TRUE(await_metrics(d.sock(), {"cascade_stage_restarts_total 2"}));
  const std::string log = d.log();
  EXPECT_TRUE(failure_logged(log, "stage 2 (rank 2, cpu:1) (pid " + std::to_string(stage2) + ") exited")) << log;
  EXPECT_TRUE(failure_logged(log, "stage 1 (rank 1, cpu:0) (pid " + std::to_string(new1) + ") is not responding"))
      << log;
  std::printf("restart after a kill: serving again %.2f s after the 503; after a stall: %.2f s after SIGSTOP\n", first,
              second);
  ::kill(d.pid(), SIGTERM);
  EXPECT_EQ(d.wait_exit(30), 0) << d.log();
}

// A stage whose step throws reports the error and exits non-zero, and so does the
// other stage once its peer is gone. Open MPI would take such an exit as a reason to
// tear down the runtime the daemon spawns from (comm/world.cpp), and the restart would
// never come back: the daemon must replace them and serve again.
TEST(Server, AStageThatFailsAStepIsRestartedAndTheDaemonServesAgain) {
  TempDir dir;
  ::setenv("CASCADE_FAULT", "2:step=3:error", 1);  // the new stages inherit it: step 3 fails again
  Daemon d(dir, fixture("llama_gqa"), small_server_toml(), kTwoStages);
  ::unsetenv("CASCADE_FAULT");
  const Reply failed =
      call(d.sock(), "POST", "/v1/completions", R"({"prompt": [1, 2], "max_tokens": 8, "ignore_eos": true})", kAuth);
  EXPECT_EQ(failed.status, 503) << failed.body;
  EXPECT_NE(failed.body.find("injected fault"), std::string::npos) << failed.body;
  const double back = await_restarts(d, 1, 30);
  ASSERT_GE(back, 0) << d.log();
  const Reply after =
      call(d.sock(), "POST", "/v1/completions", R"({"prompt": [1, 2], "max_tokens": 2, "ignore_eos": true})", kAuth);
  EXPECT_EQ(after.status, 200) << after.body << d.log();
  std::printf("restart after a failed step: serving again %.2f s after the 503\n", back);
  // Open MPI says so when it aborts a job it was told to (its default): then the runtime is going down.
  EXPECT_EQ(d.log().find("the job has been aborted"), std::string::npos) << d.log();
  ::kill(d.pid(), SIGTERM);
  EXPECT_EQ(d.wait_exit(30), 0) << d.log();
}

// With no restarts allowed (or the limit reached) a stage failure ends the daemon with
// a non-zero exit, the reason in its log and no socket file left behind.
TEST(Server, AStageFailureBeyondTheRestartLimitExitsWithAnError) {
  TempDir dir;
  Daemon d(dir, fixture("llama_gqa"), small_server_toml("max_restarts = 0\n"), kTwoStages);
  const int stage2 = call(d.sock(), "GET", "/health", "", kAuth).j()["stages"][1]["pid"].get<int>();
  ::kill(stage2, SIGKILL);
  EXPECT_EQ(d.wait_exit(20), 1) << d.log();
  const std::string log = d.log();
  EXPECT_TRUE(failure_logged(log, "stage 2 (rank 2, cpu:1) (pid " + std::to_string(stage2) + ") exited")) << log;
  EXPECT_NE(log.find("not restarting the stages: 0 restarts"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists(d.sock()));
}

// Under mpirun the ranks are fixed: the daemon says it cannot restart them and the job
// exits non-zero, so whatever runs mpirun can start it again.
TEST(Server, UnderMpirunAStageFailureEndsTheJobWithAnError) {
  TempDir dir;
  Daemon d(dir, fixture("llama_gqa"), small_server_toml(), kTwoStages, "mpirun --oversubscribe -np 3");
  const int stage2 = call(d.sock(), "GET", "/health", "", kAuth).j()["stages"][1]["pid"].get<int>();
  ::kill(stage2, SIGKILL);
  const int rc = d.wait_exit(30);
  EXPECT_NE(rc, 0) << d.log();
  EXPECT_NE(rc, -1) << "still running after 30 s:\n" << d.log();
}

}  // namespace
}  // namespace cascade::test
