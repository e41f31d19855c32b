// libFuzzer: a tokenizer.json. Loading either succeeds, and then encoding and decoding
// a fixed text run without error, or throws TokenizerError (never anything else).
#include "daemon/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile f(data, size);
  try {
    const auto tok = daemon::Tokenizer::load(f.path());
    const std::vector<int64_t> ids = tok->encode("Hello wörld 你好 \xf0\x9f\x98\x80  x\ny", true);
    tok->decode(ids, false);
    tok->decode(ids, true);
  } catch (const daemon::TokenizerError&) {
  }
  return 0;
}
