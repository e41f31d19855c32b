// libFuzzer: step headers as a stage reads them off a channel (comm/message.h). Whatever
// the bytes, decode_step returns a header or throws CommError (never anything else, no
// read past the buffer), and a header it returns re-encodes to bytes that decode to the
// same header: what a stage forwards is what it read.
#include "comm/message.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const comm::StepHeader h = comm::decode_step(data, size);
    const std::vector<uint8_t> once = comm::encode(h);
    const std::vector<uint8_t> twice = comm::encode(comm::decode_step(once.data(), once.size()));
    if (once != twice) fuzz::broken("a decoded header does not survive re-encoding", std::to_string(size) + " bytes");
  } catch (const comm::CommError&) {
  }
  return 0;
}
