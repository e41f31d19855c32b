#include "daemon/tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "daemon/tokenizer/tokenizer_parts.h"

namespace cascade::daemon {

using namespace tok;

struct AddedToken {
  int64_t id;
  std::string content;  // as matched: normalized for normalized tokens
  bool special, lstrip, rstrip, single_word, normalized;
};

struct Tokenizer::Impl {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre;
  std::unique_ptr<Model> model;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> raw_added, norm_added;  // matched before / after normalization
  std::map<int64_t, std::string> added_by_id;
  std::set<int64_t> special_ids;
  std::vector<nlohmann::json> template_single;  // TemplateProcessing "single"
  std::map<std::string, std::vector<int64_t>> template_ids;
  int64_t vocab_size = 0;

  // Splits `text` around added-token matches: (id or -1, [begin, end)). HF's
  // leftmost-longest matching, single_word, lstrip and rstrip rules.
  std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> split_added(const std::string& text,
                                                                         const std::vector<AddedToken>& toks) const;
  void encode_piece(const Piece& p, std::vector<int64_t>* out) const;
};

namespace {

bool is_space_at(const std::string& s, size_t i, size_t* len) {
  const uint32_t c = utf8_decode(s, i, len);
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Rust's char::is_alphanumeric, approximated by a Unicode regex class.
bool word_char(const std::string& c) {
  static const Regex re("^[\\p{Alphabetic}\\p{N}]");
  return !c.empty() && !re.find_all(c).empty();
}

std::string last_char(const std::string& s, size_t end) {
  size_t b = end;
  while (b > 0 && (static_cast<unsigned char>(s[b - 1]) & 0xC0) == 0x80) --b;
  return b > 0 ? s.substr(b - 1, end - b + 1) : std::string();
}

}  // namespace

std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> Tokenizer::Impl::split_added(
    const std::string& text, const std::vector<AddedToken>& toks) const {
  std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> out;
  size_t start_offset = 0, pos = 0;
  while (pos < text.size() && !toks.empty()) {
    // Leftmost-longest: the first position where any token matches, its longest match.
    const AddedToken* best = nullptr;
    size_t at = pos;
    for (; at < text.size() && !best; ++at) {
      for (const auto& t : toks) {
        if (!t.content.empty() && text.compare(at, t.content.size(), t.content) == 0 &&
            (!best || t.content.size() > best->content.size()))
          best = &t;
      }
      if (best) break;
    }
    if (!best) break;
    size_t start = at, stop = at + best->content.size();
    pos = stop;
    if (best->single_word) {
      const bool left_ok = start == 0 || !word_char(last_char(text, start));
      size_t len = 0;
      const bool right_ok = stop == text.size() || (utf8_decode(text, stop, &len), !word_char(text.substr(stop, len)));
      if (!left_ok || !right_ok) {
        pos = start + 1;
        continue;
      }
    }
    if (best->lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t b = s - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        size_t len = 0;
        if (!is_space_at(text, b, &len)) break;
        s = b;
      }
      start = std::max(s, start_offset);
    }
    if (best->rstrip) {
      size_t len = 0;
      while (stop < text.size() && is_space_at(text, stop, &len)) stop += len;
    }
    if (start_offset < start) out.push_back({-1, {start_offset, start}});
    out.push_back({best->id, {start, stop}});
    start_offset = stop;
    pos = std::max(pos, stop);
  }
  if (start_offset < text.size()) out.push_back({-1, {start_offset, text.size()}});
  return out;
}

void Tokenizer::Impl::encode_piece(const Piece& p, std::vector<int64_t>* out) const {
  std::vector<Piece> words = pre ? pre->apply(p) : std::vector<Piece>{p};
  for (const auto& w : words) model->tokenize(w.text, out);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::shared_ptr<const Tokenizer> Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string file = fs::is_directory(path) ? (fs::path(path) / "tokenizer.json").string() : path;
  std::ifstream in(file);
  if (!in) throw TokenizerError(file + ": cannot open (expected a tokenizer.json or a directory holding one)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw TokenizerError(file + ": not valid JSON: " + e.what());
  }
  auto impl = std::make_unique<Impl>();
  try {
    if (!j.contains("model")) throw TokenizerError("tokenizer.json: no \"model\"");
    impl->model = make_model(j.at("model"));
    impl->normalizer = make_normalizer(j.value("normalizer", nlohmann::json()));
    impl->pre = make_pre_tokenizer(j.value("pre_tokenizer", nlohmann::json()));
    impl->decoder = make_decoder(j.value("decoder", nlohmann::json()));
    impl->vocab_size = impl->model->size();
    for (const auto& a : j.value("added_tokens", nlohmann::json::array())) {
      AddedToken t{json_int(a.at("id"), "an added token's id"),
                   a.at("content").get<std::string>(),
                   a.value("special", false),
                   a.value("lstrip", false),
                   a.value("rstrip", false),
                   a.value("single_word", false),
                   a.value("normalized", false)};
      if (t.id < 0 || t.id > kMaxTokenId)
        throw TokenizerError("tokenizer.json: added token id " + std::to_string(t.id) + " is out of range");
      impl->added_by_id[t.id] = t.content;
      if (t.special) impl->special_ids.insert(t.id);
      impl->vocab_size = std::max(impl->vocab_size, t.id + 1);
      if (t.normalized && impl->normalizer) {
        Piece p{t.content, true};
        impl->normalizer->apply(p);
        t.content = p.text;
        impl->norm_added.push_back(t);
      } else {
        impl->raw_added.push_back(t);
      }
    }
    const nlohmann::json post = j.value("post_processor", nlohmann::json());
    auto read_post = [&](const nlohmann::json& p, auto& self) -> void {
      const std::string type = p.value("type", std::string());
      if (type == "TemplateProcessing") {
        impl->template_single = p.at("single").get<std::vector<nlohmann::json>>();
        for (auto it = p.at("special_tokens").begin(); it != p.at("special_tokens").end(); ++it) {
          for (const auto& id : it.value().at("ids"))
            impl->template_ids[it.key()].push_back(json_int(id, "a post-processor special token id"));
        }
        // encode() reads these without checks: every special token must be defined here.
        for (const auto& item : impl->template_single) {
          if (!item.is_object() || !item.contains("SpecialToken")) continue;
          const std::string id = item.at("SpecialToken").at("id").get<std::string>();
          if (!impl->template_ids.count(id))
            throw TokenizerError("tokenizer.json: post-processor template uses '" + id + "', not in special_tokens");
        }
      } else if (type == "Sequence") {
        for (const auto& q : p.at("processors")) self(q, self);
      } else if (type != "ByteLevel") {  // ByteLevel only adjusts offsets
        throw TokenizerError("tokenizer.json: post-processor '" + type +
                             "' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)");
      }
    };
    if (!post.is_null()) read_post(post, read_post);
  } catch (const TokenizerError& e) {
    throw TokenizerError(file + ": " + e.what());
  } catch (const nlohmann::json::exception& e) {
    throw TokenizerError(file + ": malformed tokenizer.json: " + e.what());
  }
  return std::shared_ptr<const Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<int64_t> ids;
  for (const auto& [id, span] : m.split_added(text, m.raw_added)) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    Piece p{text.substr(span.first, span.second - span.first), span.first == 0};
    if (m.normalizer) m.normalizer->apply(p);
    for (const auto& [nid, nspan] : m.split_added(p.text, m.norm_added)) {
      if (nid >= 0) {
        ids.push_back(nid);
        continue;
      }
      m.encode_piece({p.text.substr(nspan.first, nspan.second - nspan.first), p.at_start && nspan.first == 0}, &ids);
    }
  }
  if (!add_special_tokens || m.template_single.empty()) return ids;
  std::vector<int64_t> out;
  for (const auto& item : m.template_single) {
    if (item.contains("Sequence")) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else if (item.contains("SpecialToken")) {
      const auto& v = m.template_ids.at(item.at("SpecialToken").at("id").get<std::string>());  // checked at load
      out.insert(out.end(), v.begin(), v.end());
    }
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> toks;
  for (int64_t id : ids) {
    if (skip_special_tokens && m.special_ids.count(id)) continue;
    const auto a = m.added_by_id.find(id);
    if (a != m.added_by_id.end()) {
      toks.push_back(a->second);
    } else if (const std::string* t = m.model->token(id)) {
      toks.push_back(*t);
    }  // unknown ids are skipped, as HF does
  }
  if (!m.decoder) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) out += (i ? " " : "") + toks[i];
    return out;
  }
  m.decoder->decode(toks);
  std::string out;
  for (const auto& t : toks) out += t;
  return out;
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

// ---- streaming ----

StreamDecoder::StreamDecoder(std::shared_ptr<const Tokenizer> tok, bool skip_special_tokens)
    : tok_(std::move(tok)), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  // Decode a window that starts a little before the unread part, so decoders that treat
  // the first token specially see the same context as a full decode; return only the
  // new suffix, and hold it while it ends in an incomplete character (U+FFFD).
  const std::vector<int64_t> window(ids_.begin() + prefix_, ids_.end());
  const std::vector<int64_t> before(ids_.begin() + prefix_, ids_.begin() + read_);
  const std::string prefix_text = tok_->decode(before, skip_special_);
  const std::string text = tok_->decode(window, skip_special_);
  static const std::string kReplacement = "\xEF\xBF\xBD";
  if (text.size() <= prefix_text.size() || (text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0)) {
    return "";
  }
  std::string out = text.substr(prefix_text.size());
  prefix_ = read_;
  read_ = ids_.size();
  return out;
}

std::string StreamDecoder::flush() {
  const std::vector<int64_t> window(ids_.begin() + prefix_, ids_.end());
  const std::vector<int64_t> before(ids_.begin() + prefix_, ids_.begin() + read_);
  const std::string text = tok_->decode(window, skip_special_);
  const std::string prefix_text = tok_->decode(before, skip_special_);
  prefix_ = read_ = ids_.size();
  return text.size() > prefix_text.size() ? text.substr(prefix_text.size()) : "";
}

}  // namespace cascade::daemon
