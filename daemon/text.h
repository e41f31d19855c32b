// `cascade tokenize` and `cascade detokenize`.
#pragma once

#include <string>

namespace cascade::daemon {

struct TextOptions {
  std::string tokenizer;  // tokenizer.json or its directory
  std::string text;       // the text, or "1,2,3" for detokenize
  bool special = false;   // --add-special-tokens / --skip-special-tokens
};

// {"ids": [...]}; throws on invalid UTF-8 or a tokenizer that does not load.
std::string tokenize_json(const TextOptions& o);
// The text; throws naming an id outside the vocabulary.
std::string detokenize(const TextOptions& o);

}  // namespace cascade::daemon
