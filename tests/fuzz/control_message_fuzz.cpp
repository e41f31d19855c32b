// libFuzzer: the control messages between the coordinator and its stages (comm/control.h)
// as either end reads them off MPI. Whatever the bytes, each decoder returns a message or
// throws std::invalid_argument (never anything else), and a message it returns
// re-encodes to bytes that decode to the same message.
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "comm/control.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

namespace {

template <typename Decode>
void round_trip(const std::vector<uint8_t>& bytes, Decode decode, const char* what) {
  try {
    const std::string once = comm::encode(decode(bytes));
    const std::string twice = comm::encode(decode(std::vector<uint8_t>(once.begin(), once.end())));
    if (once != twice) fuzz::broken("a decoded message does not survive re-encoding", what);
  } catch (const std::invalid_argument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  round_trip(bytes, comm::decode_assignment, "assignment");
  round_trip(bytes, comm::decode_stats, "stats report");
  round_trip(bytes, comm::decode_failure, "error report");
  try {  // a variant: re-encode whichever alternative came out
    const auto m = comm::decode_load(bytes);
    const std::string once = std::visit([](const auto& x) { return comm::encode(x); }, m);
    const auto again = comm::decode_load(std::vector<uint8_t>(once.begin(), once.end()));
    if (std::visit([](const auto& x) { return comm::encode(x); }, again) != once)
      fuzz::broken("a decoded load report does not survive re-encoding", "load report");
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
