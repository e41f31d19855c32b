#include "comm/message.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace cascade::comm {
namespace {

StepHeader sample() {
  StepHeader h;
  h.step_id = 123456789012ull;
  h.microbatch = 3;
  h.kind = StepKind::kDecode;
  h.seqs = {{0, 17, 1, 0.0, 0, 1.0, 0}, {5, 42, 1, 0.7, 40, 0.95, 99, false}};
  h.flags = kStepWantLogits;
  h.shape = {2, 2560};
  h.dtype = 15;
  return h;
}

TEST(Message, RoundTrip) {
  const StepHeader h = sample();
  const auto b = encode(h);
  EXPECT_EQ(decode_step(b.data(), b.size()), h);
  StepHeader empty;
  const auto e = encode(empty);
  EXPECT_EQ(decode_step(e.data(), e.size()), empty);
}

TEST(Message, EveryTruncationIsAnError) {
  const auto b = encode(sample());
  for (size_t n = 0; n < b.size(); ++n) {
    EXPECT_THROW(decode_step(b.data(), n), CommError) << n << " bytes";
  }
  EXPECT_THROW_WITH(decode_step(b.data(), 10), CommError, "truncated");
}

TEST(Message, WrongMagicVersionAndGarbage) {
  auto b = encode(sample());
  auto v = b;
  v[4] = 9;  // version field
  EXPECT_THROW_WITH(decode_step(v.data(), v.size()), CommError, "wire version 9", "speaks 2");
  auto m = b;
  m[0] ^= 0xFF;
  EXPECT_THROW_WITH(decode_step(m.data(), m.size()), CommError, "bad magic");
  auto t = b;
  t.push_back(0);
  EXPECT_THROW_WITH(decode_step(t.data(), t.size()), CommError, "1 trailing bytes");
  auto k = b;
  k[18] = 7;  // kind
  EXPECT_THROW_WITH(decode_step(k.data(), k.size()), CommError, "unknown kind 7");
}

}  // namespace
}  // namespace cascade::comm
