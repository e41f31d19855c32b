// Two real processes (fork) talking through the shared-memory ring: every size from one
// byte to 64 MiB, both directions; and the ways a wait must end without a hang.
#include "comm/shm_channel.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <random>

#include "tests/test_util.h"

namespace cascade::comm {
namespace {

using std::chrono::milliseconds;

std::string unique_name(const char* tag) {
  return std::string("cascade-test-") + tag + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(std::random_device{}());
}

Clock::time_point in(int ms) { return Clock::now() + milliseconds(ms); }

// A child that echoes every message from `a` back on `b` until it sees an empty one.
pid_t spawn_echo(const std::string& a, const std::string& b) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  try {
    auto in_ch = ShmChannel::open(a, in(5000));
    auto out_ch = ShmChannel::open(b, in(5000));
    const pid_t parent = ::getppid();
    in_ch->set_liveness([parent] { return ::getppid() == parent; }, "the test process");
    while (true) {
      const auto m = in_ch->recv(in(30000));
      out_ch->send(m.data(), m.size(), in(30000));
      if (m.empty()) break;
    }
    ::_exit(0);
  } catch (const std::exception& e) {  // the parent sees only "gone": say why here
    std::fprintf(stderr, "echo child: %s\n", e.what());
    ::_exit(3);
  } catch (...) {
    ::_exit(3);
  }
}

// True while `pid` has not exited (reaps it when it has, so a zombie counts as gone,
// and prints how it ended: the status is gone once reaped).
std::function<bool()> alive(pid_t pid) {
  return [pid] {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == 0) return true;
    std::fprintf(stderr, "child %d ended: %s %d\n", static_cast<int>(pid), WIFSIGNALED(st) ? "signal" : "exit",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    return false;
  };
}

TEST(ShmChannel, EchoEverySizeBothDirections) {
  const std::string a = unique_name("a"), b = unique_name("b");
  auto to_child = ShmChannel::create(a, 8 << 20);  // smaller than the largest message
  auto from_child = ShmChannel::create(b, 8 << 20);
  const pid_t child = spawn_echo(a, b);
  from_child->set_liveness(alive(child), "echo child");
  std::mt19937 rng(1);
  for (size_t n : {size_t(1), size_t(7), size_t(4096), size_t(65537), size_t(1 << 20) + 3, size_t(64) << 20}) {
    std::vector<uint8_t> msg(n);
    for (auto& x : msg) x = static_cast<uint8_t>(rng());
    to_child->send(msg.data(), msg.size(), in(20000));
    const auto back = from_child->recv(in(20000));
    ASSERT_EQ(back.size(), n);
    EXPECT_TRUE(back == msg) << n << " bytes came back different";
  }
  to_child->send(nullptr, 0, in(1000));  // stop
  EXPECT_TRUE(from_child->recv(in(5000)).empty());
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

TEST(ShmChannel, ReceiveTimesOutWithoutAPeer) {
  auto ch = ShmChannel::create(unique_name("t"), 4096);
  const auto t0 = Clock::now();
  EXPECT_THROW_WITH(ch->recv(in(200)), CommError, "timed out waiting to receive");
  EXPECT_LT(Clock::now() - t0, milliseconds(2000));
}

TEST(ShmChannel, SendTimesOutWhenNobodyDrainsTheRing) {
  auto ch = ShmChannel::create(unique_name("f"), 4096);
  std::vector<uint8_t> big(10000);
  EXPECT_THROW_WITH(ch->send(big.data(), big.size(), in(200)), CommError, "timed out waiting to send");
}

TEST(ShmChannel, ADeadPeerIsAnErrorNotAHang) {
  const std::string a = unique_name("d"), b = unique_name("e");
  auto to_child = ShmChannel::create(a, 4096);
  auto from_child = ShmChannel::create(b, 4096);
  const pid_t child = spawn_echo(a, b);
  from_child->set_liveness(alive(child), "echo child (rank 1)");
  ::usleep(100000);
  ::kill(child, SIGKILL);
  const auto t0 = Clock::now();
  EXPECT_THROW_WITH(from_child->recv(in(60000)), CommError, "echo child (rank 1) is gone");
  EXPECT_LT(Clock::now() - t0, milliseconds(10000));
}

TEST(ShmChannel, OpenWaitsForTheCreatorWithADeadline) {
  EXPECT_THROW_WITH(ShmChannel::open(unique_name("missing"), in(100)), CommError,
                    "timed out waiting for shared memory");
  const std::string n = unique_name("dup");
  auto ch = ShmChannel::create(n, 4096);
  EXPECT_THROW_WITH(ShmChannel::create(n, 4096), CommError, "shm_open");
}

}  // namespace
}  // namespace cascade::comm
