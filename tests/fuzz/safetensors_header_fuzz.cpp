// libFuzzer: a safetensors file (8-byte length, JSON header, data). Opening it either
// succeeds, and then every tensor's byte range lies inside the file, or throws
// StorageError (never anything else, never a read outside the mapping).
#include "storage/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile f(data, size);
  try {
    const auto file = storage::SafetensorsFile::open(f.path());
    for (const auto& [name, info] : file->tensors()) {
      if (file->file_offset(info) + info.nbytes() > file->file_size()) fuzz::broken("tensor past the file's end", name);
      volatile uint8_t touch = info.nbytes() ? file->data(info)[info.nbytes() - 1] : 0;  // ASan checks the read
      (void)touch;
    }
  } catch (const storage::StorageError&) {
  }
  return 0;
}
