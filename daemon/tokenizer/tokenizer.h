// Hugging Face tokenizer.json in C++: the same ids and the same text as the Rust
// `tokenizers` library, for BPE and Unigram (SentencePiece) models with the normalizers,
// pre-tokenizers, post-processors and decoders that causal LMs and T5 ship (see
// tokenizer_parts.h).
// Anything else in a tokenizer.json fails load() with a message naming it.
//
// Encoding runs: added tokens split out of the raw text (non-normalized ones first,
// then normalized ones on the normalized text) -> normalizer -> pre-tokenizer -> model
// -> post-processor (only with add_special_tokens). Decoding maps ids to tokens (added
// tokens included, special ones dropped with skip_special_tokens) and runs the decoder.
//
// Thread-safety: a loaded Tokenizer is immutable; encode/decode may run on any number
// of threads. A StreamDecoder belongs to one sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cascade::daemon {

class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Tokenizer {
 public:
  // `path` is a tokenizer.json or a directory holding one. Throws TokenizerError.
  static std::shared_ptr<const Tokenizer> load(const std::string& path);
  ~Tokenizer();

  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens) const;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const;

  int64_t vocab_size() const;  // model vocab plus added tokens (largest id + 1)

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Incremental detokenization for streaming: feed ids one at a time and get back only
// text that is final. It never returns half a UTF-8 character, and byte-fallback
// pieces are held until their bytes form whole characters. Concatenating every
// returned piece (and flush()) equals decode() of all ids.
class StreamDecoder {
 public:
  StreamDecoder(std::shared_ptr<const Tokenizer> tok, bool skip_special_tokens);
  std::string push(int64_t id);
  std::string flush();  // whatever is still held (e.g. an incomplete byte sequence, as U+FFFD)

 private:
  std::shared_ptr<const Tokenizer> tok_;
  bool skip_special_;
  std::vector<int64_t> ids_;
  size_t prefix_ = 0;  // ids_[prefix_, read_) produced text already returned
  size_t read_ = 0;
};

}  // namespace cascade::daemon
