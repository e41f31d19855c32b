// SentencePiece Unigram as HF `tokenizers` runs it (its encode_optimized): a Viterbi
// pass over the word's characters, ties going to the piece found first (earlier end
// position, then shorter piece), then <unk> fusion and byte fallback.
#include <algorithm>
#include <limits>

#include "daemon/tokenizer/tokenizer_parts.h"

namespace cascade::daemon::tok {
namespace {

// HF's (and SentencePiece's) penalty below the lowest piece score for an unknown character.
constexpr double kUnkPenalty = 10.0;

}  // namespace

Unigram::Unigram(const nlohmann::json& m) {
  const auto& vocab = m.at("vocab");
  if (!vocab.is_array()) throw TokenizerError("tokenizer.json: Unigram vocab must be a list of [piece, score]");
  if (vocab.size() > static_cast<size_t>(kMaxTokenId))
    throw TokenizerError("tokenizer.json: Unigram vocab has more than " + std::to_string(kMaxTokenId) + " pieces");
  double min_score = std::numeric_limits<double>::infinity();
  for (const auto& e : vocab) {
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
      throw TokenizerError("tokenizer.json: Unigram vocab entry " + e.dump() + " is not [piece, score]");
    ids_[e[0].get<std::string>()] = static_cast<int64_t>(pieces_.size());
    pieces_.push_back(e[0].get<std::string>());
    scores_.push_back(e[1].get<double>());
    min_score = std::min(min_score, scores_.back());
  }
  if (pieces_.empty()) throw TokenizerError("tokenizer.json: Unigram vocab is empty");
  // HF accepts a missing unk_id and then fails on the first character outside the
  // vocabulary; refusing at load keeps encode() free of errors a client could trigger.
  if (!m.contains("unk_id") || m.at("unk_id").is_null())
    throw TokenizerError("tokenizer.json: Unigram model without unk_id is not supported");
  unk_ = json_int(m.at("unk_id"), "Unigram unk_id");
  if (unk_ < 0 || unk_ >= size())
    throw TokenizerError("tokenizer.json: Unigram unk_id " + std::to_string(unk_) + " is not in the vocabulary (" +
                         std::to_string(size()) + " pieces)");
  unk_score_ = min_score - kUnkPenalty;
  byte_fallback_ = m.value("byte_fallback", false);
  bytes_ = ByteTokens(ids_);
  for (const auto& [piece, id] : ids_)
    if (!piece.empty()) sorted_.push_back(id);
  std::sort(sorted_.begin(), sorted_.end(), [&](int64_t a, int64_t b) { return pieces_[a] < pieces_[b]; });
}

const std::string* Unigram::token(int64_t id) const { return id < 0 || id >= size() ? nullptr : &pieces_[id]; }

void Unigram::tokenize(const std::string& word, std::vector<int64_t>* out) const {
  if (word.empty()) return;
  const size_t n = word.size();
  struct Best {
    double score = 0;
    int64_t id = -1;
    size_t start = 0;
    bool set = false;
  };
  std::vector<Best> best(n + 1);
  best[0].set = true;
  auto offer = [&](size_t end, size_t start, int64_t id, double score) {
    const double s = best[start].score + score;
    if (!best[end].set || s > best[end].score) best[end] = {s, id, start, true};
  };
  for (size_t start = 0; start < n;) {
    const size_t mblen = std::min(utf8_len(static_cast<unsigned char>(word[start])), n - start);
    bool single = false;
    // Pieces in [lo, hi) of sorted_ all begin with word[start, start + k).
    auto lo = sorted_.begin(), hi = sorted_.end();
    for (size_t k = 0; start + k < n && lo != hi; ++k) {
      if (pieces_[*lo].size() == k) ++lo;  // the piece equal to the prefix itself, matched at k - 1
      const unsigned char c = static_cast<unsigned char>(word[start + k]);
      auto byte_at = [&](int64_t id) { return static_cast<unsigned char>(pieces_[id][k]); };
      lo = std::partition_point(lo, hi, [&](int64_t id) { return byte_at(id) < c; });
      hi = std::partition_point(lo, hi, [&](int64_t id) { return byte_at(id) == c; });
      if (lo != hi && pieces_[*lo].size() == k + 1) {
        offer(start + k + 1, start, *lo, scores_[*lo]);
        single |= k + 1 == mblen;
      }
    }
    if (!single) offer(start + mblen, start, unk_, unk_score_);
    start += mblen;
  }
  // Back from the end. A piece's id is its node's (sorted_ holds ids_'s ids, so the
  // last id of a repeated piece, as HF's lookup by text gives); runs of <unk> fuse into
  // one piece of text, which is looked up, else spelled in bytes, else <unk>.
  std::vector<int64_t> ids;
  std::string unk_run;
  auto flush_unk = [&] {
    if (unk_run.empty()) return;
    const auto id = ids_.find(unk_run);
    std::vector<int64_t> spelled;
    if (id != ids_.end()) {
      ids.push_back(id->second);
    } else if (byte_fallback_ && bytes_.spell(unk_run, &spelled)) {
      ids.insert(ids.end(), spelled.rbegin(), spelled.rend());  // `ids` is built back to front
    } else {
      ids.push_back(unk_);
    }
    unk_run.clear();
  };
  for (size_t end = n; end > 0;) {
    const Best& b = best[end];
    if (b.id == unk_) {
      unk_run.insert(0, word, b.start, end - b.start);
    } else {
      flush_unk();
      ids.push_back(b.id);
    }
    end = b.start;
  }
  flush_unk();
  out->insert(out->end(), ids.rbegin(), ids.rend());
}

}  // namespace cascade::daemon::tok
