// `cascade complete` against a real daemon on the demo model.
#include "daemon/http/client.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sstream>
#include <thread>

#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

TEST(Complete, SaysWhenNoDaemonListens) {
  test::TempDir dir;
  std::ostringstream out, err;
  EXPECT_EQ(complete({dir.file("none.sock"), "hi", 4, 0, ""}, out, err), 1);
  EXPECT_NE(err.str().find("cannot connect to " + dir.file("none.sock")), std::string::npos) << err.str();
  EXPECT_NE(err.str().find("is `cascade serve` running?"), std::string::npos);
}

TEST(Complete, StreamsTheGreedyContinuation) {
  test::TempDir dir;
  const std::string sock = dir.file("c.sock"), cfg = dir.file("c.toml");
  test::write_file(cfg, "[model]\npath = \"" + std::string(CASCADE_SOURCE_DIR) + "/models/demo\"\n" +
                            "[placement]\nmax_memory = { \"cpu\" = \"1GiB\" }\n[runtime]\nmax_batch = 2\n" +
                            "max_seq_len = 128\n[server]\nsocket = \"" + sock + "\"\n");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::freopen("/dev/null", "w", stderr);
    ::execl(CASCADE_BINARY, CASCADE_BINARY, "serve", "--config", cfg.c_str(), nullptr);
    ::_exit(127);
  }
  for (int i = 0; i < 400 && !std::filesystem::exists(sock); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::ostringstream out, err;
  const int rc = complete({sock, "import numpy as np", 24, 0, ""}, out, err);
  std::ostringstream out2, err2;
  const int rc_bad = complete({sock, "x", 100000, 0, ""}, out2, err2);
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_EQ(rc, 0) << err.str();
  const test::CliRun g = test::run_cascade("generate --model " + std::string(CASCADE_SOURCE_DIR) +
                                           "/models/demo --prompt 'import numpy as np' --max-new-tokens 24");
  EXPECT_EQ("import numpy as np" + out.str(), g.out);  // generate prints prompt + continuation
  EXPECT_EQ(rc_bad, 1);
  EXPECT_NE(err2.str().find("HTTP 400"), std::string::npos) << err2.str();
  EXPECT_NE(err2.str().find("cap of"), std::string::npos) << err2.str();
}

}  // namespace
}  // namespace cascade::daemon
