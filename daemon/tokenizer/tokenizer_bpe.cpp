// Byte-pair encoding as HF's BPE model applies it: characters (or their byte
// fallbacks, or <unk>) merged lowest rank first, leftmost first on ties.
#include <algorithm>
#include <queue>

#include "daemon/tokenizer/tokenizer_parts.h"

namespace cascade::daemon::tok {

ByteTokens::ByteTokens(const std::unordered_map<std::string, int64_t>& vocab) {
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const auto it = vocab.find(name);
    ids_[b] = it == vocab.end() ? -1 : it->second;
  }
}

bool ByteTokens::spell(std::string_view raw, std::vector<int64_t>* out) const {
  for (unsigned char c : raw)
    if (ids_[c] < 0) return false;
  for (unsigned char c : raw) out->push_back(ids_[c]);
  return true;
}

std::unique_ptr<Model> make_model(const nlohmann::json& j) {
  const std::string type = j.value("type", std::string("BPE"));
  if (type == "BPE") return std::make_unique<Bpe>(j);
  if (type == "Unigram") return std::make_unique<Unigram>(j);
  throw TokenizerError("tokenizer.json: model '" + type + "' is not supported (supported: BPE, Unigram)");
}

Bpe::Bpe(const nlohmann::json& m) {
  if (!m.value("dropout", nlohmann::json()).is_null() && m.at("dropout").get<double>() > 0) {
    throw TokenizerError("tokenizer.json: BPE dropout is not supported for inference");
  }
  for (auto it = m.at("vocab").begin(); it != m.at("vocab").end(); ++it) {
    const int64_t id = json_int(it.value(), "a vocab id");
    if (id < 0 || id > kMaxTokenId)
      throw TokenizerError("tokenizer.json: vocab id " + std::to_string(id) + " is out of range [0, " +
                           std::to_string(kMaxTokenId) + "]");
    vocab_[it.key()] = id;
    if (id >= static_cast<int64_t>(id_to_token_.size())) id_to_token_.resize(id + 1);
    id_to_token_[id] = it.key();
  }
  auto str_or_empty = [&](const char* k) {
    return m.contains(k) && m[k].is_string() ? m[k].get<std::string>() : std::string();
  };
  prefix_ = str_or_empty("continuing_subword_prefix");
  suffix_ = str_or_empty("end_of_word_suffix");
  byte_fallback_ = m.value("byte_fallback", false);
  fuse_unk_ = m.value("fuse_unk", false);
  ignore_merges_ = m.value("ignore_merges", false);
  const std::string unk = str_or_empty("unk_token");
  if (!unk.empty()) {
    const auto it = vocab_.find(unk);
    if (it == vocab_.end()) throw TokenizerError("tokenizer.json: unk_token '" + unk + "' is not in the vocabulary");
    unk_ = it->second;
  }
  bytes_ = ByteTokens(vocab_);
  int64_t rank = 0;
  for (const auto& mj : m.at("merges")) {
    std::string a, b;
    if (mj.is_array() && mj.size() == 2) {  // ["a", "b"]: tokens may contain spaces
      a = mj[0].get<std::string>();
      b = mj[1].get<std::string>();
    } else if (mj.is_string()) {  // "a b"
      const std::string s = mj.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        throw TokenizerError("tokenizer.json: merge '" + s + "' is not two tokens separated by one space");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      throw TokenizerError("tokenizer.json: a merge is neither \"a b\" nor [\"a\", \"b\"]: " + mj.dump());
    }
    const auto ia = vocab_.find(a), ib = vocab_.find(b);
    const std::string merged =
        a + (!prefix_.empty() && b.compare(0, prefix_.size(), prefix_) == 0 ? b.substr(prefix_.size()) : b);
    const auto im = vocab_.find(merged);
    if (ia == vocab_.end() || ib == vocab_.end() || im == vocab_.end()) {
      throw TokenizerError("tokenizer.json: merge '" + a + " " + b +
                           "' uses or makes a token missing from the vocabulary");
    }
    merges_.emplace(std::make_pair(ia->second, ib->second), std::make_pair(rank++, im->second));
  }
}

const std::string* Bpe::token(int64_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size()) || id_to_token_[id].empty()) return nullptr;
  return &id_to_token_[id];
}

void Bpe::tokenize(const std::string& word, std::vector<int64_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // Symbols: a doubly linked list over the word's characters.
  struct Sym {
    int64_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Sym> s;
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    size_t len = 0;
    utf8_decode(word, i, &len);
    std::string piece = word.substr(i, len);
    if (i > 0) piece = prefix_ + piece;
    if (i + len == word.size()) piece += suffix_;
    i += len;
    const auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      s.push_back({it->second, 0, 0, true});
      last_unk = false;
      continue;
    }
    if (std::vector<int64_t> spelled;
        byte_fallback_ && bytes_.spell(std::string_view(word).substr(i - len, len), &spelled)) {
      for (int64_t id : spelled) s.push_back({id, 0, 0, true});
      last_unk = false;
      continue;
    }
    if (unk_ >= 0) {
      if (!(fuse_unk_ && last_unk)) s.push_back({unk_, 0, 0, true});
      last_unk = true;
    }
  }
  const int n = static_cast<int>(s.size());
  for (int k = 0; k < n; ++k) {
    s[k].prev = k - 1;
    s[k].next = k + 1 < n ? k + 1 : -1;
  }
  struct Cand {
    int64_t rank;
    int pos;
    int64_t new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> q;
  auto consider = [&](int a) {
    if (a < 0 || s[a].next < 0) return;
    const auto it = merges_.find({s[a].id, s[s[a].next].id});
    if (it != merges_.end()) q.push({it->second.first, a, it->second.second});
  };
  for (int k = 0; k + 1 < n; ++k) consider(k);
  while (!q.empty()) {
    const Cand c = q.top();
    q.pop();
    // Skip candidates made stale by an earlier merge.
    if (!s[c.pos].alive || s[c.pos].next < 0) continue;
    const int b = s[c.pos].next;
    const auto it = merges_.find({s[c.pos].id, s[b].id});
    if (it == merges_.end() || it->second.second != c.new_id) continue;
    s[c.pos].id = c.new_id;
    s[b].alive = false;
    s[c.pos].next = s[b].next;
    if (s[b].next >= 0) s[s[b].next].prev = c.pos;
    consider(s[c.pos].prev);
    consider(c.pos);
  }
  for (int k = 0; k >= 0 && k < n; k = s[k].next) out->push_back(s[k].id);
}

// ---- decoders ----

namespace {

class DecSequence : public Decoder {
 public:
  explicit DecSequence(const nlohmann::json& j) {
    for (const auto& d : j.at("decoders")) parts_.push_back(make_decoder(d));
  }
  void decode(std::vector<std::string>& t) const override {
    for (const auto& d : parts_) d->decode(t);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

class DecByteLevel : public Decoder {
 public:
  void decode(std::vector<std::string>& t) const override {
    std::string bytes;
    for (const auto& tok : t) {
      std::string b;
      bool ok = true;
      for (size_t i = 0; i < tok.size() && ok;) {
        size_t len = 0;
        const auto it = char_to_byte().find(utf8_decode(tok, i, &len));
        if (it == char_to_byte().end())
          ok = false;
        else
          b += static_cast<char>(it->second);
        i += len;
      }
      bytes += ok ? b : tok;  // a token outside the byte alphabet passes through as is
    }
    t = {lossy_utf8(bytes)};
  }
};

class DecReplace : public Decoder {
 public:
  explicit DecReplace(const nlohmann::json& j) : content_(j.at("content").get<std::string>()) {
    const auto& p = j.at("pattern");
    if (p.contains("String"))
      lit_ = p.at("String").get<std::string>();
    else
      re_ = std::make_unique<Regex>(p.at("Regex").get<std::string>());
  }
  void decode(std::vector<std::string>& t) const override {
    for (auto& tok : t) {
      const auto ms = re_ ? re_->find_all(tok) : literal(tok);
      std::string out;
      size_t prev = 0;
      for (const auto& [b, e] : ms) {
        out += tok.substr(prev, b - prev) + content_;
        prev = e;
      }
      tok = out + tok.substr(prev);
    }
  }

 private:
  std::vector<std::pair<size_t, size_t>> literal(const std::string& s) const {
    std::vector<std::pair<size_t, size_t>> m;
    if (lit_.empty()) return m;
    for (size_t p = s.find(lit_); p != std::string::npos; p = s.find(lit_, p + lit_.size()))
      m.emplace_back(p, p + lit_.size());
    return m;
  }
  std::string content_, lit_;
  std::unique_ptr<Regex> re_;
};

class DecByteFallback : public Decoder {
 public:
  void decode(std::vector<std::string>& t) const override {
    std::vector<std::string> out;
    std::string bytes;
    size_t count = 0;
    auto flush = [&] {
      if (!count) return;
      if (valid_utf8(bytes))
        out.push_back(bytes);
      else
        for (size_t k = 0; k < count; ++k) out.push_back("\xEF\xBF\xBD");
      bytes.clear();
      count = 0;
    };
    for (const auto& tok : t) {
      if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>' && isxdigit(tok[3]) && isxdigit(tok[4])) {
        bytes += static_cast<char>(std::stoi(tok.substr(3, 2), nullptr, 16));
        ++count;
        continue;
      }
      flush();
      out.push_back(tok);
    }
    flush();
    t = std::move(out);
  }
};

class DecFuse : public Decoder {
 public:
  void decode(std::vector<std::string>& t) const override {
    std::string all;
    for (const auto& s : t) all += s;
    t = {all};
  }
};

class DecStrip : public Decoder {
 public:
  explicit DecStrip(const nlohmann::json& j)
      : content_(j.at("content").get<std::string>()),
        start_(static_cast<int>(
            std::clamp<int64_t>(j.contains("start") ? json_int(j.at("start"), "Strip start") : 0, 0, 1 << 20))),
        stop_(static_cast<int>(
            std::clamp<int64_t>(j.contains("stop") ? json_int(j.at("stop"), "Strip stop") : 0, 0, 1 << 20))) {}
  void decode(std::vector<std::string>& t) const override {
    for (auto& tok : t) {
      for (int k = 0; k < start_ && tok.compare(0, content_.size(), content_) == 0 && !content_.empty(); ++k) {
        tok.erase(0, content_.size());
      }
      for (int k = 0; k < stop_ && tok.size() >= content_.size() && !content_.empty() &&
                      tok.compare(tok.size() - content_.size(), content_.size(), content_) == 0;
           ++k) {
        tok.erase(tok.size() - content_.size());
      }
    }
  }

 private:
  std::string content_;
  int start_, stop_;
};

class DecMetaspace : public Decoder {
 public:
  DecMetaspace(std::string rep, bool prepend) : rep_(std::move(rep)), prepend_(prepend) {}
  void decode(std::vector<std::string>& t) const override {
    for (size_t i = 0; i < t.size(); ++i) {
      std::string out;
      for (size_t p = 0; p < t[i].size();) {
        if (t[i].compare(p, rep_.size(), rep_) == 0) {
          if (!(i == 0 && prepend_)) out += ' ';  // HF drops every replacement char of the first token
          p += rep_.size();
        } else {
          out += t[i][p++];
        }
      }
      t[i] = out;
    }
  }

 private:
  std::string rep_;
  bool prepend_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  const std::string t = component_type(j, "decoder");
  if (t == "Sequence") return std::make_unique<DecSequence>(j);
  if (t == "ByteLevel") return std::make_unique<DecByteLevel>();
  if (t == "Replace") return std::make_unique<DecReplace>(j);
  if (t == "ByteFallback") return std::make_unique<DecByteFallback>();
  if (t == "Fuse") return std::make_unique<DecFuse>();
  if (t == "Strip") return std::make_unique<DecStrip>(j);
  if (t == "Metaspace") {
    std::string scheme = j.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    return std::make_unique<DecMetaspace>(j.value("replacement", std::string("\xE2\x96\x81")), scheme != "never");
  }
  throw TokenizerError("tokenizer.json: decoder '" + t +
                       "' is not supported (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, "
                       "Metaspace)");
}

}  // namespace cascade::daemon::tok
