#include "comm/heartbeat.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"

namespace cascade::comm {
namespace {

std::string table_name() { return "/cascade-test-hb-" + std::to_string(::getpid()); }

// A child process that opens the table and beats as rank 1 until killed.
pid_t beating_child(const std::string& name) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    auto hb = Heartbeats::open(name, Clock::now() + std::chrono::seconds(5));
    hb->start(1);
    ::pause();
    ::_exit(0);
  }
  return pid;
}

void wait_registered(const Heartbeats& hb, pid_t pid) {
  for (int i = 0; i < 500 && hb.pid(1) != pid; ++i) ::usleep(10000);
  ASSERT_EQ(hb.pid(1), pid);
}

TEST(Heartbeats, LiveThenStoppedThenDead) {
  auto hb = Heartbeats::create(table_name(), 2);
  const pid_t child = beating_child(hb->name());
  wait_registered(*hb, child);
  hb->check(1, 0.5, "stage 1");  // beating
  ::kill(child, SIGSTOP);
  ::usleep(700000);
  EXPECT_THROW_WITH(hb->check(1, 0.5, "stage 1 (rank 1, cpu:0)"), CommError, "stage 1 (rank 1, cpu:0)",
                    "pid " + std::to_string(child), "not responding: no heartbeat for");
  ::kill(child, SIGCONT);
  ::usleep(300000);
  hb->check(1, 0.5, "stage 1");  // resumed: beating again
  ::kill(child, SIGKILL);
  ::usleep(100000);  // a zombie until reaped: already counts as exited
  EXPECT_THROW_WITH(hb->check(1, 30, "stage 1"), CommError, "exited");
  ::waitpid(child, nullptr, 0);
  EXPECT_THROW_WITH(hb->check(1, 30, "stage 1"), CommError, "exited");
}

TEST(Heartbeats, ARankThatNeverRegistersStallsAfterTheTimeout) {
  auto hb = Heartbeats::create(table_name(), 3);
  hb->check(2, 0.3, "stage 2");
  ::usleep(400000);
  EXPECT_THROW_WITH(hb->check(2, 0.3, "stage 2"), CommError, "stage 2 did not start");
  hb->check(2, 0.3, "stage 2", /*startup_s=*/30);  // still within its start-up grace
}

TEST(Heartbeats, OpenFailsClearly) {
  EXPECT_THROW_WITH(Heartbeats::open("/cascade-test-no-such-table", Clock::now()), CommError, "no heartbeat table");
  auto hb = Heartbeats::create(table_name(), 1);
  EXPECT_THROW_WITH(Heartbeats::create(hb->name(), 1), CommError, "File exists");
  EXPECT_THROW_WITH(hb->check(5, 1, "x"), CommError, "out of range");
}

TEST(Heartbeats, ProcessRunning) {
  EXPECT_TRUE(process_running(::getpid()));
  EXPECT_FALSE(process_running(0));
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::usleep(100000);
  EXPECT_FALSE(process_running(child));  // zombie
  ::waitpid(child, nullptr, 0);
  EXPECT_FALSE(process_running(child));
}

}  // namespace
}  // namespace cascade::comm
