// Encode speed: a file (default tests/data/tokenizers/bench.txt, 1 MB of mixed text)
// encoded whole, best of N runs, per tokenizer. Prints MB/s and tokens; --ids-out
// writes the first tokenizer's ids as a JSON list (as scripts/hf_tokenizer_bench.py
// --ids-out does, for an id-by-id comparison).
//   build/bench/tokenizer_bench [--runs 5] [--text FILE] [--ids-out FILE] TOKENIZER_DIR...
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "daemon/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  int runs = 5;
  std::string text_file = "tests/data/tokenizers/bench.txt", ids_out;
  std::vector<std::string> toks;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--runs" && i + 1 < argc)
      runs = std::stoi(argv[++i]);
    else if (a == "--text" && i + 1 < argc)
      text_file = argv[++i];
    else if (a == "--ids-out" && i + 1 < argc)
      ids_out = argv[++i];
    else
      toks.push_back(a);
  }
  std::ifstream in(text_file, std::ios::binary);
  if (!in || toks.empty()) {
    std::fprintf(stderr, "usage: tokenizer_bench [--runs N] [--text FILE] [--ids-out FILE] TOKENIZER_DIR...\n");
    return 2;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  for (const auto& path : toks) {
    auto tok = cascade::daemon::Tokenizer::load(path);
    double best = 1e30;
    std::vector<int64_t> ids;
    for (int r = 0; r < runs; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      ids = tok->encode(text, false);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const size_t n = ids.size();
    if (!ids_out.empty() && path == toks.front()) std::ofstream(ids_out) << nlohmann::json(ids).dump();
    std::printf("%-40s %8.1f ms for %zu bytes (%zu tokens): %.2f MB/s\n", path.c_str(), best * 1e3, text.size(), n,
                text.size() / best / 1e6);
  }
  return 0;
}
