#include "daemon/text.h"

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "daemon/generate.h"
#include "daemon/tokenizer/tokenizer.h"

namespace cascade::daemon {

std::string tokenize_json(const TextOptions& o) {
  auto tok = Tokenizer::load(o.tokenizer);
  try {
    (void)nlohmann::json(o.text).dump();  // throws on invalid UTF-8
  } catch (const nlohmann::json::exception&) {
    throw std::invalid_argument("the text is not valid UTF-8");
  }
  return nlohmann::json{{"ids", tok->encode(o.text, o.special)}}.dump();
}

std::string detokenize(const TextOptions& o) {
  auto tok = Tokenizer::load(o.tokenizer);
  const std::vector<int64_t> ids = parse_ids(o.text);
  for (int64_t id : ids) {
    if (id >= tok->vocab_size()) {
      throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary (size " +
                                  std::to_string(tok->vocab_size()) + ")");
    }
  }
  return tok->decode(ids, o.special);
}

}  // namespace cascade::daemon
