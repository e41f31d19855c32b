// scan_stops (daemon/stop_strings.h): what a choice may send while its text grows, and
// where a stop sequence cuts it, as the scheduler calls it after each token.
#include "daemon/stop_strings.h"

#include <gtest/gtest.h>

namespace cascade::daemon {
namespace {

constexpr size_t npos = std::string::npos;

TEST(StopStrings, WithoutStopsEverythingIsSafe) {
  const StopScan s = scan_stops("hello world", 3, {}, false);
  EXPECT_EQ(s.safe, 11u);
  EXPECT_EQ(s.cut, npos);
}

TEST(StopStrings, ATailThatCouldGrowIntoAStopIsHeldBackUntilFinal) {
  // "wor" may become "world": hold it; "x" cannot begin "world".
  EXPECT_EQ(scan_stops("hello wor", 0, {"world"}, false).safe, 6u);
  EXPECT_EQ(scan_stops("hello wox", 0, {"world"}, false).safe, 9u);
  // The text ends here: nothing can complete the stop, so all of it goes.
  EXPECT_EQ(scan_stops("hello wor", 0, {"world"}, true).safe, 9u);
  // Of two stops, the longer held tail wins.
  EXPECT_EQ(scan_stops("ab\nAs", 0, {"\n\n", "s\nAss"}, false).safe, 4u);
  EXPECT_EQ(scan_stops("ab\nAs", 0, {"\n\n", "\nAsk"}, false).safe, 2u);
}

TEST(StopStrings, TheEarliestStopCutsTheTextWhereItBegins) {
  const StopScan s = scan_stops("one. two! three", 0, {"!", "."}, false);
  EXPECT_EQ(s.cut, 3u);
  EXPECT_EQ(s.safe, 3u);
  EXPECT_EQ(scan_stops("one. two! three", 0, {"!", "."}, true).cut, 3u);
}

TEST(StopStrings, AStopSpanningWhatWasSentIsFoundAndSafeNeverMovesBack) {
  // "wor" was held back before; "ld" arrives. The stop begins at 6, before emitted = 6.
  StopScan s = scan_stops("hello world", 6, {"world"}, false);
  EXPECT_EQ(s.cut, 6u);
  EXPECT_EQ(s.safe, 6u);
  // A stop wholly inside the sent text, longer ago than the stop's length, is not
  // searched again (it would have cut then).
  s = scan_stops("ab!cdefgh", 8, {"!"}, false);
  EXPECT_EQ(s.cut, npos);
  EXPECT_EQ(s.safe, 9u);
  // What was sent stays sent even where the held tail would begin before it.
  EXPECT_EQ(scan_stops("abcwor", 5, {"world"}, false).safe, 5u);
}

}  // namespace
}  // namespace cascade::daemon
